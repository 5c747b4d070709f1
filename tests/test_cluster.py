"""The SLURM profile on a real one-node cluster (munge, slurmdbd + MariaDB, slurmctld, slurmd).

``cluster/local_slurm/setup_slurm.sh`` installs Debian's packages and starts the daemons
under a per-test state directory; the module fixture always runs ``teardown_slurm.sh`` after,
on failure too. The synthetic pipeline runs twice on the same tiny config: locally and with
``snakemake --profile cluster``; the jobs must show in ``sacct`` and the summaries must agree.
Skipped (with the reason) only where SLURM cannot be installed: not root, or no apt-get.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from .conftest import ROOT

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

SCRIPTS = ROOT / "cluster" / "local_slurm"
PARTITION = "brainpipe_test"
ACCOUNT = "brainpipe_test"


def tiny_config() -> dict:
    """The default config shrunk: 2 subjects, 1 ROI, ridge on 2 feature models, small volumes."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config.update(
        subjects=["01", "02"],
        sessions=["01", "02"],
        runs=["01", "02"],
        rois=["V1"],
        feature_models=["gabor", "caption"],
        models=["ridge"],
    )
    # Only the ridge encoder: the SLURM mechanics, not the model zoo, are under test here.
    config["model_params"] = {
        k: v for k, v in config.get("model_params", {}).items() if k == "ridge"
    }
    config["synthetic"].update(
        seed=4,
        n_subjects=2,
        n_sessions=2,
        n_runs=2,
        trials_per_run=24,
        voxel_size_mm=8.0,
        n_shared=8,
    )
    return config


def run_snakemake(workdir: Path, *args: str, env: dict | None = None) -> str:
    """Run the real workflow in ``workdir`` (config.yaml there); return its output."""
    cmd = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(ROOT / "Snakefile"),
        "--directory", str(workdir),
        "--configfile", str(workdir / "config.yaml"),
        *args,
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{output[-6000:]}")
    return output


def _cannot_install_reason() -> str | None:
    installed = all(
        shutil.which(exe) or Path("/usr/sbin", exe).exists()
        for exe in ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sacct")
    )
    if os.geteuid() != 0:
        return "not root: slurmd must run as root (and apt-get needs root to install SLURM)"
    if not installed and shutil.which("apt-get") is None:
        return "SLURM is not installed and apt-get is not available to install it"
    return None


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running one-node cluster; yields the environment that points SLURM tools at it."""
    reason = _cannot_install_reason()
    if reason:
        print(f"SKIP test_cluster: {reason}")
        pytest.skip(reason)
    state = Path(tempfile.mkdtemp(prefix="brainpipe-slurm-", dir="/tmp"))
    try:
        setup = subprocess.run(
            ["bash", str(SCRIPTS / "setup_slurm.sh"), str(state),
             "--partition", PARTITION, "--account", ACCOUNT],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if setup.returncode == 3:  # the script could not install the packages
            print(f"SKIP test_cluster: {setup.stderr.strip()}")
            pytest.skip(setup.stderr.strip())
        assert setup.returncode == 0, f"setup_slurm.sh failed:\n{setup.stderr[-4000:]}"
        env = dict(
            os.environ,
            SLURM_CONF=str(state / "slurm.conf"),
            BRAINPIPE_SLURM_PARTITION=PARTITION,
            BRAINPIPE_SLURM_ACCOUNT=ACCOUNT,
        )
        yield env
    finally:
        subprocess.run(
            ["bash", str(SCRIPTS / "teardown_slurm.sh"), str(state), "--remove"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip


@pytest.fixture(scope="module")
def runs(slurm_cluster, tmp_path_factory):
    """The same tiny config run locally and on SLURM; returns (local dir, cluster dir, output)."""
    config = yaml.safe_dump(tiny_config())
    local = tmp_path_factory.mktemp("local")
    (local / "config.yaml").write_text(config)
    run_snakemake(local, "--cores", "2")

    on_slurm = tmp_path_factory.mktemp("slurm")
    (on_slurm / "config.yaml").write_text(config)
    output = run_snakemake(
        on_slurm,
        "--profile",
        str(ROOT / "cluster"),
        "--latency-wait",
        "5",
        # This node answers at once; a real cluster keeps the plugin's 40 s.
        "--slurm-init-seconds-before-status-checks",
        "2",
        env=slurm_cluster,
    )
    return local, on_slurm, output


def _sacct(env: dict) -> pd.DataFrame:
    out = subprocess.run(
        ["sacct", "--allusers", "--allocations", "--noheader", "--parsable2",
         "--starttime", "now-1days", "--format", "JobID,JobName,Partition,Account,State,Comment%200"],  # noqa: E501
        capture_output=True, text=True, env=env, check=True, timeout=60,
    ).stdout  # fmt: skip
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    return pd.DataFrame(rows, columns=["job", "name", "partition", "account", "state", "comment"])


def test_jobs_went_through_slurm(runs, slurm_cluster):
    _, on_slurm, output = runs
    jobs = _sacct(slurm_cluster)
    assert len(jobs) > 0, "sacct lists no jobs"
    assert (jobs["state"] == "COMPLETED").all(), jobs.to_string()
    assert set(jobs["partition"]) == {PARTITION} and set(jobs["account"]) == {ACCOUNT}
    # Every stage ran as a SLURM job (the plugin puts the rule or group name in the comment).
    comments = " ".join(jobs["comment"])
    for rule in ("download", "validate_inputs", "preprocess", "betas", "features", "summary"):
        assert f"rule_{rule}" in comments, (rule, comments)
    # train and evaluate went as grouped jobs, fewer submissions than jobs.
    assert "group_models" in comments or "models" in comments, comments
    n_model_jobs = 2 * 1 * 2 * 2  # subjects x rois x features x (train, evaluate)
    assert comments.count("models") < n_model_jobs
    assert (on_slurm / "results" / "synthetic" / "report.html").exists()


def test_cluster_results_equal_local_results(runs):
    local, on_slurm, _ = runs
    a = pd.read_csv(local / "results" / "synthetic" / "summary.tsv", sep="\t", dtype=str)
    b = pd.read_csv(on_slurm / "results" / "synthetic" / "summary.tsv", sep="\t", dtype=str)
    assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0
    keys = [c for c in a.columns if not _is_numeric(a[c])]
    a, b = a.sort_values(keys).reset_index(drop=True), b.sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[keys], b[keys])
    for column in a.columns.difference(keys):
        np.testing.assert_allclose(
            a[column].astype(float), b[column].astype(float), rtol=1e-5, atol=1e-6,
            equal_nan=True, err_msg=column,
        )  # fmt: skip


def _is_numeric(column: pd.Series) -> bool:
    try:
        column.astype(float)
    except ValueError:
        return False
    return column.name not in ("subject", "roi")
