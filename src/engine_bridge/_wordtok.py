"""A tiny word-level tokenizer for the simulated engine (no model files needed)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_TOKEN = re.compile(r"\s*\S+|\s+")


class WordTokenizer:
    """Splits text into whitespace-prefixed words; ids are assigned on first sight.

    ``decode(encode(text)) == text`` for every string.
    """

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._pieces: list[str] = []

    def split(self, text: str) -> list[str]:
        return _TOKEN.findall(text)

    def ids_for(self, pieces: Iterable[str]) -> list[int]:
        out = []
        ids = self._ids
        for p in pieces:
            i = ids.get(p)
            if i is None:
                i = ids[p] = len(self._pieces)
                self._pieces.append(p)
            out.append(i)
        return out

    def encode(self, text: str) -> list[int]:
        return self.ids_for(self.split(text))

    def decode(self, ids: Sequence[int]) -> str:
        try:
            return "".join(self._pieces[i] for i in ids)
        except IndexError:
            raise ValueError("unknown token id") from None

    def count(self, text: str) -> int:
        return len(_TOKEN.findall(text))
