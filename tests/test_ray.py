"""The Ray tests, run in a network namespace with loopback only.

Ray binds and dials the host's external address; tests may reach loopback
only.  So the Ray tests (``test_ray_engine.py``, the engine conformance suite
on :class:`~engine_bridge.RayEngine`, the CLI's ``--ray``) run in a pytest of
their own under ``unshare -n`` with ``lo`` up, on one multi-node cluster
(``raycluster.py``).  This test starts that run and fails with its report.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import raycluster

TESTS = Path(__file__).parent
RAY_TESTS = ["test_ray_engine.py", "test_engine_conformance.py", "test_ray_cli.py"]


def _namespace_unavailable() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare and ip (util-linux, iproute2)"
    probe = subprocess.run(
        ["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        return f"cannot make a network namespace here: {probe.stderr.strip()}"
    return None


@pytest.mark.slow
@pytest.mark.skipif(raycluster.IN_NAMESPACE, reason="(this is the run inside the namespace)")
def test_ray_tests_in_a_loopback_namespace() -> None:
    pytest.importorskip("ray")
    why = _namespace_unavailable()
    if why:
        pytest.skip(why)
    # a Ray temp folder of its own: `--ray auto` finds this run's cluster, never
    # another one on the machine (their address files share /tmp/ray otherwise)
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    env = dict(os.environ, SCAFFOLD_RAY_NETNS="1", RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=ray_tmp)
    # Ray's workers import the tests' helpers (engine factories) as the test does
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH")) if p)
    # every Ray test, the ones that load the embedded model too (-m overrides addopts)
    pytest_args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", "--no-header", "-m", ""]
    script = 'ip link set lo up && exec "$0" "$@"'
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", script, sys.executable, *pytest_args, *RAY_TESTS],
        cwd=TESTS,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,  # a hang guard
    )
    shutil.rmtree(ray_tmp, ignore_errors=True)
    report = proc.stdout[-6000:] + proc.stderr[-3000:]
    print(report)
    assert proc.returncode == 0, report
    assert " passed" in proc.stdout and " failed" not in proc.stdout
