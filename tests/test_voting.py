"""Self-consistency variants: equivalence, weights, stop rules, concurrency, budgets."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from engine_bridge import SimulatedCall, SimulatedEngine
from scaffold_actors import AsyncScaffoldingLlm, EngineWorker, GenerationTask
from scaffold_actors.methods import (
    AdaptiveConsistency,
    LeaderDecided,
    MajorityVote,
    Sampler,
    VoteState,
    WindowAgreement,
    beta_majority_confidence,
    math_equivalent,
)


def engine_of(replies: list[str]) -> SimulatedEngine:
    return SimulatedEngine(replies)


async def vote(method: MajorityVote, replies: list[str]) -> tuple[Any, SimulatedEngine]:
    engine = engine_of(replies)
    async with AsyncScaffoldingLlm(method, {"generation": EngineWorker(engine)}) as llm:
        r = await llm.generate("q")
        assert llm.stats()["engine_requests"] == 0
    return r, engine


def test_math_equivalence() -> None:
    assert math_equivalent("1/2", "0.5")
    assert math_equivalent("\\frac{1}{2}", "0.5")
    assert math_equivalent("\\dfrac12", "1/2")
    assert math_equivalent("x^2+2x", "2x+x^2")
    assert not math_equivalent("3", "4")
    assert not math_equivalent("{", "}")  # unparsable: only equal to itself


async def test_equivalent_spellings_vote_together() -> None:
    replies = [
        "so \\boxed{\\frac{1}{2}}",
        "so \\boxed{0.75}",
        "so \\boxed{0.5}",
        "so \\boxed{3/4}",
        "so \\boxed{\\dfrac12}",
    ]
    plain, _ = await vote(MajorityVote(Sampler(), samples=5, early_stop=False), replies)
    # as strings: 1/2 (from "0.5" normalised) x1, 3/4 x2, ... the fraction strings differ
    assert plain.output.details["answer"] == "3/4"
    grouped, _ = await vote(
        MajorityVote(Sampler(), samples=5, early_stop=False, equivalent=math_equivalent), replies
    )
    d = grouped.output.details
    assert sorted(d["votes"].values()) == [2, 3]  # keyed by the first spelling to finish
    assert math_equivalent(d["answer"], "1/2") and d["votes"][d["answer"]] == 3
    assert grouped.output.output_str in (replies[0], replies[2], replies[4])


async def test_weighted_vote_beats_the_count() -> None:
    replies = ["\\boxed{1} low", "\\boxed{1} low", "\\boxed{2} high"]

    def weight(out: GenerationTask) -> float:
        return 5.0 if "high" in (out.output_str or "") else 1.0

    r, _ = await vote(MajorityVote(Sampler(), samples=3, early_stop=False, weight=weight), replies)
    assert r.output.details["votes"] == {"1": 2, "2": 1}
    assert r.output.details["weights"] == {"1": 2.0, "2": 5.0}
    assert r.output.details["answer"] == "2"


def test_beta_confidence_is_exact() -> None:
    assert beta_majority_confidence(0, 0) == 0.5
    assert beta_majority_confidence(1, 0) == 0.75  # Beta(2,1): P(p > 1/2) = 3/4
    assert beta_majority_confidence(3, 0) == pytest.approx(1 - 0.5**4)
    assert beta_majority_confidence(2, 2) == pytest.approx(0.5)
    assert beta_majority_confidence(6, 1) > 0.95 > beta_majority_confidence(5, 1)


def test_stop_rules_decide_on_the_vote_state() -> None:
    s = VoteState(remaining=6)
    for a in ["7", "7", "7"]:
        s.add(a, 1.0)
    assert not LeaderDecided()(s)  # 3 votes, 3 to come: could still tie
    assert not AdaptiveConsistency(0.95)(s)  # Beta(4, 1): P(p > 1/2) = 0.9375
    s.add("7", 1.0)
    assert LeaderDecided()(s)  # 4 votes, 2 to come
    assert AdaptiveConsistency(0.95)(s)  # Beta(5, 1): 0.96875
    w = VoteState(remaining=10)
    for a in ["1", "2", "2", "2"]:
        w.add(a, 1.0)
    assert WindowAgreement(3)(w) and not WindowAgreement(4)(w)
    w.add(None, 1.0)
    assert not WindowAgreement(3)(w)


async def test_adaptive_consistency_cancels_the_rest_with_limited_concurrency() -> None:
    # every sample says 7: after 4 votes Beta(5, 1) gives 0.969 >= 0.95
    method = MajorityVote(
        Sampler(), samples=16, early_stop=AdaptiveConsistency(0.95), concurrency=2
    )
    r, engine = await vote(method, ["\\boxed{7}"])
    d = r.output.details
    assert d["answer"] == "7" and d["samples_finished"] == 4
    # two at a time: at most the two after the 4th vote started, never the other ten
    assert engine._index <= 6  # 16 requested


async def test_window_agreement_stops_early() -> None:
    replies = ["\\boxed{1}", "\\boxed{2}", "\\boxed{3}", "\\boxed{3}", "\\boxed{3}"] + [
        "\\boxed{9}"
    ] * 10
    method = MajorityVote(Sampler(), samples=15, early_stop=WindowAgreement(3), concurrency=1)
    r, _ = await vote(method, replies)
    assert r.output.details["samples_finished"] == 5
    assert r.output.details["answer"] == "3"


def test_bad_stop_rule_is_rejected_at_construction() -> None:
    with pytest.raises(TypeError, match="early_stop"):
        MajorityVote(early_stop="soon")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        MajorityVote(concurrency=0)
    with pytest.raises(ValueError):
        AdaptiveConsistency(threshold=0.4)


async def test_samples_cut_by_the_token_budget_do_not_vote() -> None:
    """A request-wide budget: votes come from what finished within it; the rest
    were cancelled in the engine."""

    class Budgeted:
        def __init__(self, inner: MajorityVote, limit: int) -> None:
            self.inner, self.limit = inner, limit

        async def run(self, ctx: Any, task: GenerationTask) -> GenerationTask:
            async with ctx.token_budget(self.limit) as budget:
                out = await self.inner.run(ctx, task)
            out.customized_result_fields["spent"] = budget.spent
            return out

    def reply(call: SimulatedCall) -> str:
        # short answers for the first two requests, long ones after
        return "\\boxed{5}" if call.index < 2 else "word " * 50 + "\\boxed{6}"

    engine = SimulatedEngine(reply)
    method = Budgeted(MajorityVote(Sampler(), samples=4, early_stop=False, concurrency=2), 40)
    async with AsyncScaffoldingLlm(method, {"generation": EngineWorker(engine)}) as llm:
        r = await llm.generate("q")
        assert llm.stats()["engine_requests"] == 0
    d = r.output.details
    assert d["answer"] == "5" and d["votes"] == {"5": 2} and d["samples_finished"] == 2
    assert 40 <= d["spent"] <= 42  # at most one step per running task past the limit
    assert engine.aborted >= 1


# -- model output cannot block the event loop -----------------------------------


@contextlib.contextmanager
def checking_with(monkeypatch: pytest.MonkeyPatch, checker: Any) -> Iterator[None]:
    """Answers compared by ``checker`` (a fresh verdict cache) for the block;
    its child is stopped after."""
    from scaffold_actors.methods import _answers

    monkeypatch.setattr(_answers, "_CHECKER", checker)
    _answers._verify.cache_clear()
    try:
        yield
    finally:
        checker.close()
        _answers._verify.cache_clear()


def test_a_hostile_answer_is_not_equivalent_and_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``9^{9^{9}}`` keeps sympy busy for minutes in C code: the checker child is
    killed after its bound, the verdict is "not equivalent", and it says so."""
    from scaffold_actors.methods._mathcheck import MathChecker

    checker = MathChecker(timeout=1.0)
    with checking_with(monkeypatch, checker):
        with caplog.at_level("WARNING", logger="scaffold_actors.methods"):
            assert not math_equivalent("9^{9^{9}}", "3")
        assert checker.timeouts == 1 and "no verdict" in caplog.text
        checker.timeout = 120.0  # (a bound for the hostile answer only, not a speed test)
        assert math_equivalent("1/2", "0.5")  # a new child serves the next comparison
        assert not math_equivalent("1" * 201, "1" * 202)  # too long to parse at all
        assert "longer than 200" in caplog.text


def test_an_error_of_math_verify_is_logged_not_silent(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """When math-verify raises in the checker child, the verdict is still "not
    equivalent" (a vote needs one) but a warning names the error, and the
    checker counts it; the child goes on serving."""
    import sys

    from scaffold_actors.methods._mathcheck import MathChecker

    class Raising(MathChecker):
        def _child_command(self) -> list[str]:
            code = (
                "import math_verify\n"
                "real = math_verify.parse\n"
                "def parse(text, **kw):\n"
                "    if 'boom' in text:\n"
                "        raise OverflowError('sympy gave up')\n"
                "    return real(text, **kw)\n"
                "math_verify.parse = parse\n"
                "from scaffold_actors.methods._mathcheck import _serve\n"
                "_serve()\n"
            )
            return [sys.executable, "-c", code]

    checker = Raising(timeout=120.0)
    with checking_with(monkeypatch, checker):
        with caplog.at_level("WARNING", logger="scaffold_actors.methods"):
            assert not math_equivalent("boom", "3")
            assert math_equivalent("1/2", "0.5")  # the same child still answers
        assert checker.errors == 1 and checker.timeouts == 0
        assert "math-verify failed on 'boom' vs '3' (OverflowError: sympy gave up)" in caplog.text


async def test_the_loop_keeps_running_while_answers_are_compared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the vote compares a hostile answer, other tasks of the loop run: one
    of them sees the checker busy (impossible if the comparison held the loop)."""
    from scaffold_actors.methods import _answers
    from scaffold_actors.methods._mathcheck import MathChecker

    checker = MathChecker(timeout=1.0)
    monkeypatch.setattr(_answers, "_CHECKER", checker)
    _answers._verify.cache_clear()
    seen_busy = trio.Event()

    async def watch() -> None:
        while not seen_busy.is_set():
            if checker._lock.locked():
                seen_busy.set()
            await trio.sleep(0.001)

    replies = ["so \\boxed{3}", "so \\boxed{9^{9^{9}}}", "so \\boxed{3}"]
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            r, _ = await vote(
                MajorityVote(Sampler(), samples=3, early_stop=False, equivalent=math_equivalent),
                replies,
            )
            nursery.cancel_scope.cancel()
        assert seen_busy.is_set()
        assert r.output.details["votes"] == {"3": 2, "9^{9^{9}}": 1}
    finally:
        checker.close()
        _answers._verify.cache_clear()


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        ("\\boxed{answer}", None),  # the README's first run: "answer" counted as a vote
        # a verdict is no answer (docs/serve.md's chat once voted "correct"): the line before
        ("12 + 7 = 8\n\nThe answer is correct.", "8"),
        ("The answer is 19.\nThe answer is right.", "19"),
        ("The answer is below.\n19", "19"),
        ("I get 19. \\boxed{your answer}", "19"),  # the placeholder is skipped, not voted
        ("So \\boxed{7}. (Format: \\boxed{answer})", "7"),  # the real box before the echo
        ("\\boxed{}", None),
        ("\\boxed{\\text{Your Final Answer}}", None),
        ("\\boxed{...}", None),
        ("\\boxed{<answer>}", None),
        ("\\boxed{[answer]}", None),
        ("\\boxed{x}", "x"),  # a variable is an answer
        ("\\boxed{\\text{Paris}}", "Paris"),  # a boxed word is the word
        ("\\boxed{12}", "12"),
    ],
)
def test_placeholders_are_not_answers(completion: str, answer: str | None) -> None:
    """(What a boxed answer is; the other ways an answer is stated are in
    ``test_answers_that_fit_the_question``.)"""
    from scaffold_actors.methods._answers import extract_answer

    assert extract_answer(completion) == answer


async def test_an_echoed_placeholder_does_not_vote(autojump_clock: object) -> None:
    from scaffold_actors.testing import Script, simulated_runtime

    script = Script().then("\\boxed{answer}", "It is \\boxed{19}.", "\\boxed{answer}")
    vote = MajorityVote(Sampler(max_tokens=16), samples=3, early_stop=False)
    async with simulated_runtime(vote, script) as rt:
        result = await rt.generate("What is 12 + 7?")
    assert result.output.details["votes"] == {"19": 1}
    assert result.output.details["answer"] == "19"


async def test_the_vote_says_why_samples_did_not_vote(autojump_clock: object) -> None:
    from scaffold_actors.testing import Script, simulated_runtime

    script = Script().then("", "I am thinking about it and", "\\boxed{answer}", "So \\boxed{3}.")
    vote = MajorityVote(Sampler(max_tokens=4), samples=4, early_stop=False)
    async with simulated_runtime(vote, script) as rt:
        result = await rt.generate("q")
    assert result.output.details["votes"] == {"3": 1}
    assert result.output.details["unanswered"] == {"empty": 1, "cut_by_length": 1, "no_answer": 1}


async def test_partial_outputs_show_the_votes_as_of_their_sample(autojump_clock: object) -> None:
    """A partial output is built only when read, from what was true when its
    sample finished: a later sample does not change an earlier snapshot."""
    replies = [
        "a \\boxed{1}",
        "a b c \\boxed{2}",
        "a b c d e f \\boxed{1}",
        "a b c d e f g h i \\boxed{3}",
    ]  # of different lengths: the samples finish one at a time
    method = MajorityVote(Sampler(), samples=4, early_stop=False)
    async with AsyncScaffoldingLlm(method, {"generation": EngineWorker(engine_of(replies))}) as llm:
        r = await llm.generate_async("q")
        outputs = [out async for out in r]
    *partials, final = outputs
    assert final.finished and final.details["votes"] == {"1": 2, "2": 1, "3": 1}
    votes_after = [{"1": 1}, {"1": 1, "2": 1}, {"1": 2, "2": 1}, {"1": 2, "2": 1, "3": 1}]
    # the first three at least are read before the next sample ends (the last may
    # be overtaken by the final output: partial outputs coalesce)
    finished = [p.details["samples_finished"] for p in partials]
    assert finished[:3] == [1, 2, 3] and finished in ([1, 2, 3], [1, 2, 3, 4])
    for p, k in zip(partials, finished, strict=True):
        assert not p.finished and p.output_str == replies[k - 1]
        assert p.details["votes"] == votes_after[k - 1]


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        ("The capital of France is Paris.", "The capital of France is Paris"),
        ("**Paris**", "Paris"),
        ("Answer: Paris.", "Paris"),
        ("So the answer is 42 apples.", "42"),
        ("Yes, the sky is blue because of Rayleigh scattering.", "Yes"),
        ("No.", "No"),
        ("12 + 7 = 19", "19"),
        ("Tom has 19 apples.\nI hope this helps!", "19"),  # the pleasantry is skipped
        ("Cities:\n1. Paris\n2. Lyon", "Lyon"),  # a list marker is not a number
        ("#### 1,000", "1000"),
        ("word " * 40, None),  # a long last line is reasoning, not an answer
        ("The answer is: your answer", None),  # the format echoed is no answer
        ("I am not sure.", None),  # a line that says it has no answer
        ("Give it as \\boxed{answer}.\nStep 2: Next, choose", None),  # "Step 2" is no number
        ("", None),
    ],
)
def test_answers_that_fit_the_question(completion: str, answer: str | None) -> None:
    from scaffold_actors.methods._answers import extract_answer

    assert extract_answer(completion) == answer


def test_cut_text_gives_only_a_boxed_answer() -> None:
    from scaffold_actors.methods import cut_answer

    assert cut_answer("Let us list the steps:\n- 5. The") is None  # not "5"
    assert cut_answer("so it is 19 and") is None
    assert cut_answer("so \\boxed{19}. Then we check") == "19"
    assert cut_answer("\\boxed{answer} and") is None


async def test_a_cut_sample_does_not_vote(autojump_clock: object) -> None:
    from scaffold_actors.testing import Script, simulated_runtime

    # three samples cut by max_tokens: two mid-list, one after boxing its answer
    script = Script().then(
        "1. First 2. Then 5 and so on", "- 5. The list goes on", "So \\boxed{7}. Next we check"
    )
    vote = MajorityVote(Sampler(max_tokens=4), samples=3, early_stop=False)
    async with simulated_runtime(vote, script) as rt:
        result = await rt.generate("What is 3 + 4?")
    details = result.output.details
    assert details["votes"] == {"7": 1} and details["answer"] == "7"
    assert details["unanswered"]["cut_by_length"] == 2
