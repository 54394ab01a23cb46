"""The single-node Slurm cluster of tests/slurm/cluster.sh, as a pytest fixture.

Root, slurm-wlm and munge are needed; elsewhere the tests that use it skip with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

CLUSTER_SCRIPT = Path(__file__).parent / "slurm" / "cluster.sh"


def slurm_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "the test Slurm cluster starts its daemons as root"
    missing = [tool for tool in ("slurmctld", "slurmd", "sbatch", "munged") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (Debian packages slurm-wlm and munge)"
    return None


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Start the cluster once per test session; yields the environment that points clients at it."""
    reason = slurm_unavailable_reason()
    if reason:
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(["bash", str(CLUSTER_SCRIPT), "start", str(directory)],
                             capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        pytest.fail(f"the test Slurm cluster did not start: {started.stderr.strip()}")
    environment = {**os.environ, "SLURM_CONF": str(directory / "slurm.conf")}
    try:
        yield environment
    finally:
        subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop", str(directory)], timeout=60)
