"""Check, on the installed transformers, that HFEngine's cancellations are confirmed
by transformers' own scheduler (it reads scheduler internals, which move between
transformers versions): prints one JSON object.

    python benchmarks/hf_engine_check.py                       # the embedded model, CPU
    python benchmarks/hf_engine_check.py --model random-qwen2-0.5b --tokenizer DIR \\
        --device cuda --dtype bfloat16                         # a GPU host

Checks, each read from the manager's scheduler (active and waiting requests) right
after the engine call returns, with no waiting:

* ``leave_early``: leaving a stream after its first delta aborts the request;
* ``stop_string``: a stop string cut on our side (the request had 200 tokens to go)
  cancels it in the manager;
* ``cancel_many``: 32 streams left after one delta each (the cancels go out
  together) leave nothing;
* ``started_leave_early`` / ``started_stop_string``: the same for streams started
  without a task (``start_stream``): after ``close()``, once the stream reads
  released (the engine's confirmation), the manager holds nothing;
* ``still_serves``: a request after all that completes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from engine_bridge import EngineRequest, HFEngine, SamplingParams


def holds(engine: Any) -> int:
    scheduler = engine._manager.batch_processor.scheduler
    return len(scheduler.active_requests) + len(scheduler.waiting_requests)


async def first_delta(engine: Any, request: EngineRequest) -> None:
    async with engine.open_stream(request) as stream:
        async for _ in stream:
            break


async def collect(engine: Any, request: EngineRequest) -> tuple[str, list[int], str | None]:
    text, ids, finish = "", [], None
    async with engine.open_stream(request) as stream:
        async for delta in stream:
            text += delta.text
            ids.extend(delta.token_ids)
            finish = delta.finish_reason or finish
    return text, ids, finish


async def started(engine: Any, request: EngineRequest, leave_after_first: bool) -> str:
    """Read a stream started without a task (as the runtime does), leave it after
    its first delta or at its end, and return once the engine released it."""
    woke = trio.Event()

    def wake() -> None:
        woke.set()

    stream = engine.start_stream(request, wake)
    assert stream is not None, "no free slot"
    text = ""
    while True:
        await woke.wait()
        woke = trio.Event()
        try:
            delta = stream.next_nowait()
            while delta is not None:
                text += delta.text
                if leave_after_first:
                    break
                delta = stream.next_nowait()
        except StopAsyncIteration:
            break
        if leave_after_first and text:
            break
    stream.close()
    while not stream.released:
        await woke.wait()
        woke = trio.Event()
    stream.close()
    return text


def build(args: argparse.Namespace) -> Any:
    if args.model == "embedded":
        return HFEngine(device=args.device)
    from _random_model import random_qwen2

    model, tokenizer = random_qwen2(args.tokenizer, args.dtype, args.device)
    return HFEngine("random-qwen2-0.5b", preloaded=(model, tokenizer), device=args.device)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    import transformers

    greedy = SamplingParams(max_tokens=200, temperature=0.0)
    prompt = "Tell me a long story about a lighthouse keeper and the sea."
    out: dict[str, Any] = {"transformers": transformers.__version__, "device": args.device}
    async with build(args) as engine:
        await first_delta(engine, EngineRequest(greedy, prompt=prompt))
        out["leave_early"] = {"engine_active": engine.num_active, "manager_holds": holds(engine)}

        base, ids, _ = await collect(
            engine, EngineRequest(SamplingParams(max_tokens=12, temperature=0.0), prompt=prompt)
        )
        stop = engine.tokenizer.decode(ids[3:5], skip_special_tokens=True)
        if not stop.strip() or stop not in base:
            out["stop_string"] = {"skipped": f"no usable stop string in {base!r}"}
        else:
            params = SamplingParams(max_tokens=200, temperature=0.0, stop=(stop,))
            text, _, finish = await collect(engine, EngineRequest(params, prompt=prompt))
            out["stop_string"] = {
                "stop": stop,
                "finish": finish,
                "cut_before_stop": stop not in text,
                "manager_holds": holds(engine),
            }

        async with trio.open_nursery() as nursery:
            for i in range(32):
                nursery.start_soon(first_delta, engine, EngineRequest(greedy, prompt=f"{prompt} {i}"))
        out["cancel_many"] = {"engine_active": engine.num_active, "manager_holds": holds(engine)}

        await started(engine, EngineRequest(greedy, prompt=prompt), leave_after_first=True)
        out["started_leave_early"] = {
            "engine_active": engine.num_active,
            "manager_holds": holds(engine),
        }
        if "stop" in out["stop_string"]:
            params = SamplingParams(max_tokens=200, temperature=0.0, stop=(stop,))
            text = await started(engine, EngineRequest(params, prompt=prompt), False)
            out["started_stop_string"] = {
                "cut_before_stop": stop not in text and bool(text),
                "engine_active": engine.num_active,
                "manager_holds": holds(engine),
            }
        else:
            out["started_stop_string"] = out["stop_string"]
        out["started_streams"] = engine.started_streams

        text, _, finish = await collect(
            engine, EngineRequest(SamplingParams(max_tokens=4, temperature=0.0), prompt=prompt)
        )
        out["still_serves"] = {"finish": finish, "text_chars": len(text)}
        out["aborted"] = engine.aborted
        out["abort_timeouts"] = getattr(engine, "abort_timeouts", None)
    checks = [
        out["leave_early"]["manager_holds"] == 0,
        out["stop_string"].get("manager_holds", 0) == 0,
        out["cancel_many"]["manager_holds"] == 0,
        out["started_leave_early"]["manager_holds"] == 0,
        out["started_stop_string"].get("manager_holds", 0) == 0,
        out["still_serves"]["finish"] is not None,
    ]
    out["ok"] = all(checks)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded", help="embedded | random-qwen2-0.5b")
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder for random-qwen2-0.5b")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    result = trio.run(main, ap.parse_args())
    print(json.dumps(result, indent=1))
    sys.exit(0 if result["ok"] else 1)
