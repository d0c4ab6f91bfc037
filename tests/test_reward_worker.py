"""RewardWorker on small randomly initialised transformers models (real code path)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForSequenceClassification,
    LlamaForTokenClassification,
    PreTrainedTokenizerFast,
)

from engine_bridge import SimulatedEngine
from scaffold_actors import AsyncScaffoldingLlm, EngineWorker, RewardTask, RewardWorker
from scaffold_actors.compat import (
    BestOfNController,
    NativeGenerationController,
    NativeRewardController,
)

WORDS = "what is two plus three the answer five six first then so [PAD] [UNK]".split()


def make_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {
        w: i
        for i, w in enumerate(
            ["[PAD]", "[UNK]", "\n", *[w for w in WORDS if not w.startswith("[")]]
        )
    }
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n|\w+|[^\w\s]"), behavior="isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", eos_token="[PAD]"
    )


def make_model(tmp: Path, cls: Any, num_labels: int) -> Path:
    tok = make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_labels=num_labels,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    cls(config).save_pretrained(tmp)
    tok.save_pretrained(tmp)
    return tmp


@pytest.fixture(scope="module")
def orm_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("orm"), LlamaForSequenceClassification, 1)


@pytest.fixture(scope="module")
def prm_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("prm"), LlamaForTokenClassification, 2)


def test_outcome_scores_match_a_direct_forward_pass(orm_path: Path) -> None:
    worker = RewardWorker(orm_path)
    cands = ["the answer is five", "six", "first two then three so the answer is five"]
    scores, steps = worker.score("what is two plus three", cands)
    assert steps is None and len(scores) == 3 and len(set(scores)) == 3
    for c, s in zip(cands, scores, strict=True):
        enc = worker.tokenizer(f"what is two plus three\n{c}", return_tensors="pt")
        with torch.no_grad():
            ref = float(worker.model(**enc).logits[0, 0])
        assert s == pytest.approx(ref, abs=1e-5)  # padding in the batch changes nothing
        alone, _ = worker.score("what is two plus three", [c])
        assert alone[0] == pytest.approx(s, abs=1e-5)


def test_process_scores_one_per_step(prm_path: Path) -> None:
    worker = RewardWorker(prm_path, kind="process", aggregate="min")
    scores, steps = worker.score(
        "what is two plus three", ["first two\n\nthen three\n\nso five", "six"]
    )
    assert steps is not None and [len(s) for s in steps] == [3, 1]
    assert all(0.0 <= p <= 1.0 for s in steps for p in s)
    assert scores == [min(steps[0]), steps[1][0]]
    prod = RewardWorker(prm_path, kind="process", aggregate="prod")
    p_scores, p_steps = prod.score("what is two plus three", ["first two\n\nthen three\n\nso five"])
    assert p_scores[0] == pytest.approx(math.prod(p_steps[0]))  # type: ignore[index]


async def test_reward_tasks_through_the_runtime(orm_path: Path) -> None:
    answers = ["six", "the answer is five", "first two then three so the answer is five"]
    gen = EngineWorker(SimulatedEngine(answers))
    reward = RewardWorker(orm_path)
    ctl = BestOfNController(
        NativeGenerationController({"max_tokens": 16}),
        NativeRewardController(),
        default_sample_num=3,
    )
    async with AsyncScaffoldingLlm(ctl, {"generation": gen, "reward": reward}) as llm:
        r = await llm.generate("what is two plus three")
    scores, _ = reward.score("what is two plus three", answers)
    assert r.output.output_str == answers[max(range(3), key=lambda i: scores[i])]


async def test_reward_task_validation_and_errors(orm_path: Path, tmp_path: Path) -> None:
    from scaffold_actors import InvalidTaskError, RequestContext

    async def controller(ctx: RequestContext, task: Any) -> Any:
        await ctx.run(RewardTask(input_str="q", candidates=[]))
        return task

    async with AsyncScaffoldingLlm(
        controller,
        {"generation": EngineWorker(SimulatedEngine()), "reward": RewardWorker(orm_path)},
    ) as llm:
        with pytest.raises(InvalidTaskError, match="candidates"):
            await llm.generate("q")
    with pytest.raises(FileNotFoundError):
        RewardWorker(tmp_path / "missing")
    with pytest.raises(ValueError, match="kind"):
        RewardWorker(orm_path, kind="both")  # type: ignore[arg-type]
