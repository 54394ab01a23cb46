"""The test Slurm cluster itself: a batch job runs to COMPLETED and its output comes back."""

from __future__ import annotations

import subprocess
import time

from tests.slurm_cluster import slurm_cluster  # noqa: F401  (fixture)


def _job_state(job_id: str, environment: dict[str, str]) -> str:
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True,
                           env=environment, check=True).stdout
    return next(word.split("=", 1)[1] for word in shown.split() if word.startswith("JobState="))


def test_a_batch_job_completes(slurm_cluster, tmp_path):  # noqa: F811
    output = tmp_path / "job.out"
    submitted = subprocess.run(
        ["sbatch", "--parsable", "-o", str(output), "--wrap", "echo from-the-node"],
        capture_output=True, text=True, env=slurm_cluster, check=True, cwd=tmp_path,
    )
    job_id = submitted.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 60
    state = _job_state(job_id, slurm_cluster)
    while state in {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING"} and time.monotonic() < deadline:
        time.sleep(0.5)
        state = _job_state(job_id, slurm_cluster)
    assert state == "COMPLETED"
    assert output.read_text().strip() == "from-the-node"
