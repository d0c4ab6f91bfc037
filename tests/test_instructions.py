"""Instructions chosen per request by the question (``ByQuestionKind``): the
step-by-step methods ask a fact for one short sentence, in `scaffold run`,
bench and serve alike (one controller, the choice made per request)."""

from __future__ import annotations

import pytest

from scaffold_actors import GenerationTask
from scaffold_actors.cli._registry import COT, PLAIN, SHORT, build_method
from scaffold_actors.methods import ByQuestionKind, Sampler, asks_for_a_number
from scaffold_actors.methods._instructions import question_text
from scaffold_actors.testing import Script, simulated_runtime

FACT = "What is the capital of France?"
SUM = "What is 12 + 7?"


def by_instruction() -> Script:
    """Answers that say which instruction the engine saw (and no rule for a
    prompt that has neither: the test fails on it)."""
    return (
        Script()
        .on("one short sentence", "The capital of France is Paris.")
        .on("step by step", "12 + 7 = 19, so \\boxed{19}.")
        .on("final answer, as", "\\boxed{19}")
    )


@pytest.mark.parametrize(
    ("question", "number"),
    [
        (FACT, False),
        ("Is the sky blue on a clear day? Answer yes or no.", False),
        ("Tom has 3 apples and buys 4 more. How many apples does he have?", True),
        (SUM, True),
        ("How many legs does a spider have?", True),
    ],
)
def test_a_question_asks_for_a_number_or_not(question: str, number: bool) -> None:
    assert asks_for_a_number(question) is number
    assert ByQuestionKind("N", "S")(question) == ("N" if number else "S")


@pytest.mark.trio
async def test_one_sampler_picks_the_instruction_for_each_request(autojump_clock: object) -> None:
    sampler = Sampler(instruction=ByQuestionKind(COT, PLAIN))
    async with simulated_runtime(sampler, by_instruction()) as rt:
        fact, total = await rt.generate([FACT, SUM])
    assert fact.output.output_str == "The capital of France is Paris."
    assert total.output.output_str == "12 + 7 = 19, so \\boxed{19}."


@pytest.mark.trio
async def test_a_chat_is_judged_by_its_last_user_message(autojump_clock: object) -> None:
    sampler = Sampler(instruction=ByQuestionKind(COT, PLAIN))
    chat = [
        {"role": "user", "content": SUM},
        {"role": "assistant", "content": "19"},
        {"role": "user", "content": FACT},
    ]
    async with simulated_runtime(sampler, by_instruction()) as rt:
        result = await rt.generate([chat])
    assert result[0].output.output_str == "The capital of France is Paris."


@pytest.mark.trio
@pytest.mark.parametrize("method", ["cot", "dynasor", "best-of-n"])
async def test_the_step_by_step_methods_ask_a_fact_for_a_sentence(
    method: str, autojump_clock: object
) -> None:
    """What `scaffold run`, bench and serve build (build_method, no
    --instruction): one controller, each request asked by its own kind."""
    controller = build_method(method, samples=2, max_tokens=32)
    script = Script(default="\\boxed{19}")
    async with simulated_runtime(controller, script, reward=lambda q, a: 1.0) as rt:
        await rt.generate([FACT, SUM])
    seen = [call.prompt for call in script.calls]
    fact = [p for p in seen if FACT in p]
    total = [p for p in seen if SUM in p]
    assert fact and all(PLAIN in p and COT not in p for p in fact)
    assert total and all(COT in p and PLAIN not in p for p in total)


@pytest.mark.trio
async def test_the_votes_and_a_given_instruction_are_used_for_every_question(
    autojump_clock: object,
) -> None:
    for controller, instruction in [
        (build_method("majority-vote", samples=2, max_tokens=32), SHORT),
        (build_method("cot", samples=1, max_tokens=32, instruction="Be brief."), "Be brief."),
    ]:
        script = Script(default="\\boxed{19}")
        async with simulated_runtime(controller, script) as rt:
            await rt.generate([FACT, SUM])
        seen = [call.prompt for call in script.calls]
        assert seen and all(instruction in p for p in seen)


def test_question_text() -> None:
    assert question_text("a prompt", None) == "a prompt"
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    assert question_text(None, chat) == "q"
    assert question_text(None, [{"role": "system", "content": "s"}]) == ""
    assert question_text(None, [{"role": "user", "content": None}]) == ""


def test_bad_instructions_are_refused_at_construction() -> None:
    with pytest.raises(TypeError, match=r"Sampler\.instruction must be a str, a callable"):
        Sampler(instruction=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"ByQuestionKind\.numeric must be a str or None"):
        ByQuestionKind(1, "x")  # type: ignore[arg-type]
    task = GenerationTask(input_str="q")
    assert Sampler(instruction=ByQuestionKind(None, None)).prepare(task).input_str == "q"


def test_a_chat_gets_the_instruction_in_its_last_user_message() -> None:
    """As a text prompt gets it (the embedded model ignored it as a system
    message: docs/serve.md); the caller's messages are not changed."""
    chat = [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": SUM},
    ]
    task = GenerationTask(messages=chat)
    out = Sampler(instruction=SHORT).prepare(task).messages
    assert out is not None
    assert out[-1] == {"role": "user", "content": f"{SUM}\n{SHORT}"}
    assert out[:2] == chat[:2] and chat[-1]["content"] == SUM
    only_system = Sampler(instruction="Be brief.").prepare(
        GenerationTask(messages=[{"role": "system", "content": "s"}])
    )
    assert only_system.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "s"},
    ]
