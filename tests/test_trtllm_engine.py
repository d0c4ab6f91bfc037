"""TRTLLMEngine specifics, against the tensorrt_llm API stand-in (tests/standins)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from engine_bridge import EngineError, EngineRequest, SamplingParams, TRTLLMEngine
from scaffold_actors import AsyncScaffoldingLlm, EngineWorker
from scaffold_actors.methods import MajorityVote, Sampler

STANDINS = str(Path(__file__).parent / "standins")


def _drop_tensorrt_llm_modules() -> None:
    for name in [m for m in sys.modules if m == "tensorrt_llm" or m.startswith("tensorrt_llm.")]:
        del sys.modules[name]


@pytest.fixture(autouse=True)
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Import the stand-in as tensorrt_llm for one test, and forget it afterwards."""
    _drop_tensorrt_llm_modules()
    monkeypatch.syspath_prepend(STANDINS)
    yield
    _drop_tensorrt_llm_modules()


def engine(**kw: object) -> TRTLLMEngine:
    return TRTLLMEngine("standin-model", llm_kwargs={"max_seq_len": 256, **kw})


async def test_llm_gets_the_kv_cache_config() -> None:
    async with TRTLLMEngine(
        "m", free_gpu_memory_fraction=0.5, llm_kwargs={"max_batch_size": 8}
    ) as e:
        kv = e.llm.kv_cache_config
        assert kv.enable_block_reuse is True and kv.free_gpu_memory_fraction == 0.5
        assert e.llm.kwargs == {"max_batch_size": 8} and e.max_context == 256


async def test_sampling_params_mapping() -> None:
    async with engine() as e:
        greedy = e.sampling_params(
            EngineRequest(SamplingParams(max_tokens=5, temperature=0.0), prompt="q")
        )
        assert (greedy.max_tokens, greedy.top_k, greedy.n, greedy.logprobs) == (5, 1, 1, None)
        sp = e.sampling_params(
            EngineRequest(
                SamplingParams(
                    max_tokens=9,
                    temperature=0.7,
                    top_p=0.9,
                    top_k=20,
                    stop=("x", "y"),
                    seed=3,
                    num_logprobs=2,
                ),
                prompt="q",
            )
        )
        assert (sp.temperature, sp.top_p, sp.top_k, sp.stop, sp.seed, sp.logprobs) == (
            0.7,
            0.9,
            20,
            ["x", "y"],
            3,
            2,
        )


async def test_top_k_logprob_dicts_give_the_sampled_tokens_logprob() -> None:
    async with engine() as e:
        lps = []
        req = EngineRequest(SamplingParams(max_tokens=4, num_logprobs=2), prompt="q")
        async with e.open_stream(req) as s:
            async for d in s:
                lps += d.logprobs or ()
        assert lps == pytest.approx([-0.05, -0.1, -0.15, -0.2])


async def test_cancel_calls_abort_in_the_executor() -> None:
    async with engine(_standin_step_s=0.01) as e:
        req = EngineRequest(SamplingParams(max_tokens=64), prompt="q")
        async with e.open_stream(req) as s:
            async for _ in s:
                break
        assert e.num_active == 0
        with trio.fail_after(5):
            while e.llm.live:  # noqa: ASYNC110 - state of another thread's loop
                await trio.sleep(0.005)


async def test_missing_tensorrt_llm_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    e = TRTLLMEngine("m")
    monkeypatch.setattr(e, "module_name", "tensorrt_llm_not_installed")
    with pytest.raises(EngineError, match="needs tensorrt_llm"):
        async with e:
            pass


async def test_majority_vote_through_the_runtime() -> None:
    e = engine(_standin_reply="Two plus two is \\boxed{4}.")
    async with AsyncScaffoldingLlm(
        MajorityVote(Sampler(max_tokens=16), samples=6), {"generation": EngineWorker(e)}
    ) as llm:
        r = await llm.generate("What is 2 + 2?")
        assert llm.stats()["engine_requests"] == 0
    assert r.output.details["answer"] == "4"
    assert r.output.details["samples_finished"] == 4  # early stop after 4 of 6 agree
