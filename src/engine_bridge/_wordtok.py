"""A tiny word-level tokenizer for the simulated engine (no model files needed)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_TOKEN = re.compile(r"\s*\S+|\s+")


class WordTokenizer:
    """Splits text into whitespace-prefixed words; ids are assigned on first sight.

    ``decode(encode(text)) == text`` for every string.  An id never assigned
    (a replay's synthetic prompt, say) decodes as the word `` <id>``.
    """

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._pieces: list[str] = []

    def split(self, text: str) -> list[str]:
        return _TOKEN.findall(text)

    def split_shared(self, text: str) -> list[str]:
        """:meth:`split`, each piece the vocabulary's own string (ids assigned on
        first sight): texts held at once share their words' memory."""
        vocab = self._pieces
        return [vocab[i] for i in self.encode(text)]

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
        pieces, n = self._pieces, len(self._pieces)
        out = []
        for i in ids:
            if i < 0:
                raise ValueError(f"token ids are >= 0, got {i}")
            out.append(pieces[i] if i < n else f" <{i}>")
        return "".join(out)

    def count(self, text: str) -> int:
        return len(_TOKEN.findall(text))
