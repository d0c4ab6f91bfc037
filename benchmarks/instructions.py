"""Instructions per task of the instant workload, counted by valgrind (callgrind).

A shared machine's wall-clock timings move by 20-40 % from run to run; the number
of instructions a run executes barely moves (about 0.2 %), so an old and a new tree
compare exactly.  This runs the instant workload of ``overhead.py`` (a worker whose
handler answers at once, 8 samples per prompt) under ``valgrind --tool=callgrind``
twice, with ``--prompts`` prompts and with none (start-up, import and warm-up
alone), and prints one JSON object: the difference divided by the tasks run.  The
garbage collector runs as it would (its work is counted too).

    python benchmarks/instructions.py --mode compat --prompts 500
    PYTHONPATH=/path/to/old/src python benchmarks/instructions.py --mode compat

Needs ``valgrind`` on the PATH; about 30 s per mode for 500 prompts.
Instructions are not time (a cache miss costs more than an add), so the timed
benchmarks stay the measure of the targets; this is the A/B measure of a change.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

MODES = ("compat", "native-trio", "native-asyncio")


async def _workload(mode: str, prompts: int, samples: int) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from overhead import InstantWorker

    from scaffold_actors import AsyncScaffoldingLlm
    from scaffold_actors.compat import MajorityVoteController, NativeGenerationController
    from scaffold_actors.methods import MajorityVote, Sampler

    method: object
    if mode == "compat":
        method = MajorityVoteController(
            NativeGenerationController({"max_tokens": 64}), default_sample_num=samples
        )
    else:
        method = MajorityVote(Sampler(max_tokens=64), samples=samples, early_stop=False)
    async with AsyncScaffoldingLlm(method, {"generation": InstantWorker()}) as llm:
        await llm.generate([f"Warm-up {i}: what is 2 + 2?" for i in range(20)])
        if prompts:
            results = await llm.generate([f"Question {i}: what is 2 + 2?" for i in range(prompts)])
            assert all("\\boxed{4}" in (r.output.output_str or "") for r in results)


def _run_workload(mode: str, prompts: int, samples: int) -> None:
    import anyio

    backend = "trio" if mode == "native-trio" else "asyncio"
    anyio.run(_workload, mode, prompts, samples, backend=backend)


def _count(mode: str, prompts: int, samples: int) -> int:
    """Instructions of one process running the workload with ``prompts`` prompts."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--inner",
        "--mode",
        mode,
        "--prompts",
        str(prompts),
        "--samples",
        str(samples),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ, check=False)
    found = re.search(r"Collected\s*:\s*(\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"valgrind run failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=MODES, action="append", help="repeatable; default: all")
    ap.add_argument("--prompts", type=int, default=500)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    modes = args.mode or list(MODES)
    if args.inner:
        _run_workload(modes[0], args.prompts, args.samples)
        return
    if args.prompts < 1:
        ap.error("--prompts must be >= 1")
    if shutil.which("valgrind") is None:
        ap.error("valgrind is not on the PATH (apt-get install valgrind)")
    per_task = {}
    for mode in modes:
        base = _count(mode, 0, args.samples)
        full = _count(mode, args.prompts, args.samples)
        per_task[mode] = round((full - base) / (args.prompts * args.samples))
    import scaffold_actors

    print(
        json.dumps(
            {
                "benchmark": "instructions",
                "workload": "instant",
                "prompts": args.prompts,
                "samples_per_prompt": args.samples,
                "source": str(Path(scaffold_actors.__file__).parent),
                "python": sys.version.split()[0],
                "machine": platform.machine(),
                "instructions_per_task": per_task,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
