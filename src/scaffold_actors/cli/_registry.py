"""The methods the command line and the server offer, by name."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ..methods import (
    MCTS,
    AdaptiveConsistency,
    BeamSearch,
    BestFirstSearch,
    BestOfN,
    ByQuestionKind,
    DeepConf,
    DiverseVerifierTreeSearch,
    DynasorCoT,
    MajorityVote,
    Sampler,
    StepSearch,
    asks_for_a_number,
    math_equivalent,
)

__all__ = ["COT", "METHODS", "PLAIN", "SHORT", "MethodSpec", "asks_for_a_number", "build_method"]

COT = "Think step by step, then give the final answer as \\boxed{answer}."
#: the votes' instruction: on the embedded model the samples agree far more often
#: when asked for the answer alone (benchmarks/vote_defaults.py; docs/cli.md)
SHORT = "Give only the final answer, as \\boxed{answer}."
#: what the step-by-step methods ask instead of COT when the question asks for no number:
#: reasoning "step by step" over "What is the capital of France?" made the
#: embedded model list and count ("1. First, take a look at the French capital
#: list. It has 3 digits ...", answered "2"); docs/methods.md
PLAIN = "Answer in one short sentence."
#: tokens for a step-by-step chain: the longest of the built-in set's 17 took 274
#: on the embedded model (median 140, none cut at 512; `scaffold bench --dataset
#: arithmetic --method cot --max-tokens 512`, docs/methods.md)
REASONING_TOKENS = 320


@attrs.frozen
class MethodSpec:
    """A named method: how to build it from the common options and its own
    parameters (name -> (type, default, help)).  ``uses_reward``: it sends
    :class:`RewardTask` s (a reward model, else the generation model's own verdict)."""

    name: str
    summary: str
    build: Callable[[Sampler, int, dict[str, Any]], Any]
    params: Mapping[str, tuple[type, Any, str]] = attrs.field(factory=dict)
    uses_reward: bool = False
    #: --samples when it is not given: votes need many samples on a small model
    #: (the README's question: a vote of 16 right 10 runs of 10, of 4 wrong;
    #: docs/cli.md), searches and best-of-n stay narrow (each candidate is scored)
    default_samples: int = 4
    #: whether --samples means anything to it (False: one sample, cot and dynasor)
    uses_samples: bool = True
    #: --temperature and --instruction when they are not given.  The votes sample
    #: at 0.3 with the short instruction: measured on the built-in set and on the
    #: unfiltered one (a vote of 16: 12/17 and 17/60 right against 5/17 and 5/60
    #: at 0.7 with the step-by-step one; benchmarks/vote_defaults.py, docs/cli.md)
    default_temperature: float = 0.7
    default_instruction: str = COT
    #: --max-tokens when it is not given: what a sample needs to finish its
    #: answer on the embedded model (measured: docs/methods.md, "Token limits").
    #: A step-by-step chain took up to 274 tokens on the built-in set (median
    #: 140), so the methods that reason take 320; the votes ask for the answer
    #: alone and the searches cut steps by -p step_tokens
    default_max_tokens: int = 64


def _vote(s: Sampler, n: int, p: dict[str, Any]) -> Any:
    return MajorityVote(s, samples=n, equivalent=math_equivalent if p["math_equivalence"] else None)


def _adaptive(s: Sampler, n: int, p: dict[str, Any]) -> Any:
    return MajorityVote(
        s, samples=n, early_stop=AdaptiveConsistency(p["threshold"]), concurrency=p["concurrency"]
    )


def _steps(s: Sampler, p: dict[str, Any]) -> StepSearch:
    return StepSearch(attrs.evolve(s, max_tokens=p["step_tokens"]), max_steps=p["max_steps"])


_TREE = {
    "step_tokens": (int, 128, "tokens per step"),
    "max_steps": (int, 6, "steps at most"),
}

METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in [
        MethodSpec(
            "cot",
            "one chain-of-thought sample",
            lambda s, n, p: s,
            uses_samples=False,
            default_max_tokens=REASONING_TOKENS,
        ),
        MethodSpec(
            "majority-vote",
            "self-consistency: the most voted answer of --samples samples; stops once decided",
            _vote,
            {"math_equivalence": (bool, True, "group equal answers with math-verify")},
            default_samples=16,
            default_temperature=0.3,
            default_instruction=SHORT,
        ),
        MethodSpec(
            "adaptive-consistency",
            "majority vote that stops when the Beta posterior of the leader reaches a threshold",
            _adaptive,
            {
                "threshold": (float, 0.95, "confidence that stops sampling"),
                "concurrency": (int, 4, "samples in flight at once"),
            },
            default_samples=16,
            default_temperature=0.3,
            default_instruction=SHORT,
        ),
        MethodSpec(
            "best-of-n",
            "the candidate a reward scores highest (--reward-model, else self-verification)",
            lambda s, n, p: BestOfN(s, samples=n),
            uses_reward=True,
            default_max_tokens=REASONING_TOKENS,
        ),
        MethodSpec(
            "dynasor",
            "Dynasor-CoT: probe the reasoning every k tokens, stop when probes agree",
            lambda s, n, p: DynasorCoT(
                s, probe_interval=p["probe_interval"], certainty_window=p["certainty_window"]
            ),
            {
                "probe_interval": (int, 32, "tokens between probes"),
                "certainty_window": (int, 2, "agreeing probes that stop the reasoning"),
            },
            uses_samples=False,
            default_max_tokens=REASONING_TOKENS,
        ),
        MethodSpec(
            "deepconf",
            "DeepConf: vote among the most confident traces (offline or online)",
            lambda s, n, p: DeepConf(
                s,
                samples=n,
                mode=p["mode"],
                keep_top=p["keep_top"],
                window=p["window"],
                top_k=p["top_k"],
            ),
            {
                "mode": (str, "offline", "offline | online"),
                "keep_top": (float, 0.9, "fraction of traces kept"),
                "window": (int, 64, "tokens per confidence window"),
                "top_k": (
                    int,
                    0,
                    "token confidence from the top-k logprobs (servers that give them); "
                    "0: the sampled token's",
                ),
            },
            default_samples=16,
            default_max_tokens=REASONING_TOKENS,
        ),
        MethodSpec(
            "beam-search",
            "step-level beam search scored by a process reward (--reward-model, else self-verification)",
            lambda s, n, p: BeamSearch(_steps(s, p), beam_width=n, expansions=p["expansions"]),
            {**_TREE, "expansions": (int, 2, "next steps sampled per beam")},
            uses_reward=True,
        ),
        MethodSpec(
            "dvts",
            "diverse verifier tree search: --samples independent subtrees (process reward)",
            lambda s, n, p: DiverseVerifierTreeSearch(
                _steps(s, p), subtrees=n, expansions=p["expansions"]
            ),
            {**_TREE, "expansions": (int, 2, "next steps sampled per node")},
            uses_reward=True,
        ),
        MethodSpec(
            "best-first",
            "best-first search over steps (process reward)",
            lambda s, n, p: BestFirstSearch(
                _steps(s, p), expansions=n, max_expansions=p["max_expansions"]
            ),
            {**_TREE, "max_expansions": (int, 12, "nodes expanded at most")},
            uses_reward=True,
        ),
        MethodSpec(
            "mcts",
            "Monte Carlo tree search over steps (process reward)",
            lambda s, n, p: MCTS(_steps(s, p), iterations=p["iterations"], expansions=n),
            {**_TREE, "iterations": (int, 8, "MCTS iterations")},
            uses_reward=True,
        ),
    ]
}


def _convert(method: str, key: str, kind: type, raw: Any) -> Any:
    if not isinstance(raw, str):
        return kind(raw)
    if kind is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{method}: parameter {key} must be true or false, got {raw!r}")
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(
            f"{method}: parameter {key} must be {kind.__name__}, got {raw!r}"
        ) from None


def build_method(
    name: str,
    *,
    samples: int | None,
    max_tokens: int | None,
    temperature: float | None = None,
    params: Mapping[str, Any] | None = None,
    instruction: str | None = None,
) -> Any:
    """The controller for method ``name``.  ``samples``, ``max_tokens``,
    ``temperature`` and ``instruction`` left ``None`` are the method's own
    defaults (:attr:`MethodSpec.default_samples`, ``default_max_tokens``,
    ``default_temperature``, ``default_instruction``; a method whose default is
    step by step asks a question that wants no number for one short sentence
    instead, per request: :class:`ByQuestionKind`); ``instruction`` is appended
    to every prompt (empty: none).  Raises ``ValueError`` naming what is wrong (unknown method, unknown or
    badly typed parameter, bad value)."""
    spec = METHODS.get(name)
    if spec is None:
        raise ValueError(f"unknown method {name!r}; choose from: {', '.join(METHODS)}")
    given = dict(params or {})
    unknown = sorted(set(given) - set(spec.params))
    if unknown:
        allowed = ", ".join(spec.params) or "none"
        raise ValueError(f"{name}: unknown parameter(s) {', '.join(unknown)}; it takes: {allowed}")
    values = {
        k: _convert(name, k, kind, given[k]) if k in given else default
        for k, (kind, default, _) in spec.params.items()
    }
    chosen: Any = instruction
    if instruction is None:
        # the methods that reason step by step ask a fact for a short sentence
        # (by the question of each request: `scaffold run`, bench and serve alike)
        chosen = (
            ByQuestionKind(COT, PLAIN) if spec.default_instruction == COT else spec.default_instruction
        )
    sampler = Sampler(
        max_tokens=spec.default_max_tokens if max_tokens is None else max_tokens,
        temperature=spec.default_temperature if temperature is None else temperature,
        instruction=chosen or None,
    )
    return spec.build(sampler, samples if samples is not None else spec.default_samples, values)
