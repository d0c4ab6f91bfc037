"""The README's Python examples run as written (the embedded model swapped for
the simulated engine, the only change, so they run in seconds)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_a_readme_example_runs(index: int, tmp_path: Path) -> None:
    code = BLOCKS[index]
    assert "HFEngine()" in code  # the examples use the embedded model
    code = code.replace(
        "from engine_bridge import HFEngine", "from engine_bridge import SimulatedEngine"
    )
    code = code.replace("HFEngine()", "SimulatedEngine()")
    script = tmp_path / f"readme_{index}.py"
    script.write_text(code)
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip()  # it printed its answer
