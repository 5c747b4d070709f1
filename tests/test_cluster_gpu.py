"""The SLURM profile on a one-node cluster that has a GPU (a fake generic resource, gres/gpu).

The node advertises one GPU without a device file (``setup_slurm.sh --gpus 1``): SLURM
allocates it like a real one, torch finds no CUDA and trains on the CPU. The shared-backbone
chain of the local reference run is deleted and rerun on the cluster without any GPU
fallback: the pretraining job must ask for and get the GPU, and the summary must equal the
local one. The cluster without GPUs is tested in test_cluster.py (the request is refused).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from .test_cluster import (
    FAULT_TIMEOUT,
    assert_nothing_left,
    assert_same_summary,
    fault_run,
    local_run,  # noqa: F401  (the session's local reference run, a fixture)
    start_cluster,
    stop_cluster,
)

pytestmark = [pytest.mark.slurm, pytest.mark.integration]


@pytest.fixture(scope="module")
def gpu_cluster():
    state = Path(tempfile.mkdtemp(prefix="brainpipe-slurm-gpu-", dir="/tmp"))
    try:
        yield start_cluster(state, gpus=1)
    finally:
        stop_cluster(state)


def test_gpu_job_gets_the_gpu(gpu_cluster, local_run, tmp_path):  # noqa: F811
    env = dict(gpu_cluster)
    workdir = tmp_path / "run"
    output, jobs, seconds = fault_run(
        local_run,
        workdir,
        env,
        ["models/shared", "models/sub-*/*/sharedbackbone-*"],
        "rule_pretrain",
        lambda job: None,
        gpu_fallback=None,
    )
    print(
        f"GPU cluster: shared-backbone chain completed in {seconds:.0f} s (bound {FAULT_TIMEOUT})"
    )
    pretrain = jobs[jobs["comment"].str.startswith("rule_pretrain")]
    assert list(pretrain["state"]) == ["COMPLETED"], pretrain.to_string()
    assert "gres/gpu=1" in pretrain.iloc[0]["alloc"], pretrain.to_string()
    assert (jobs["state"] == "COMPLETED").all(), jobs.to_string()
    assert_same_summary(local_run, workdir)
    assert_nothing_left(env, workdir)
