"""Run a command and report its wall time and the peak memory of its whole
process tree (the sum of every live descendant's RSS, sampled every 0.2 s),
optionally beside CPU burners (busy processes, one core each).

    python tools/measure.py --burners 1 -- python -m pytest -q

Prints one JSON line on stderr at the end; the command's exit status is ours."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import time

import psutil


def burn() -> None:
    while True:
        pass


def tree_rss(root: psutil.Process) -> int:
    total = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--burners", type=int, default=0, help="CPU burners beside the command")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("no command")
    burners = [multiprocessing.Process(target=burn, daemon=True) for _ in range(args.burners)]
    for b in burners:
        b.start()
    start = time.monotonic()
    proc = subprocess.Popen(command)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(root))
        time.sleep(0.2)
    wall = time.monotonic() - start
    for b in burners:
        b.terminate()
    print(
        json.dumps(
            {
                "command": " ".join(command),
                "burners": args.burners,
                "wall_s": round(wall, 1),
                "peak_tree_rss_gb": round(peak / 1e9, 2),
                "returncode": proc.returncode,
            }
        ),
        file=sys.stderr,
    )
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
