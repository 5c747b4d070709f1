"""The SLURM profile on a real one-node cluster (munge, slurmdbd + MariaDB, slurmctld, slurmd).

``cluster/local_slurm/setup_slurm.sh`` installs Debian's packages and starts the daemons
under a per-module state directory (cgroup memory enforcement where the machine allows it,
1 s accounting, DOWN nodes stay DOWN until resumed, no GPU); the module fixture always runs
``teardown_slurm.sh`` after, on failure too. The synthetic pipeline with the default models
runs locally and with ``snakemake --profile cluster``; the summaries must agree and every
request in ``sacct`` must be what the rules and ``model_params`` declare.


Skipped (with the reason) only where SLURM cannot be installed: not root, or no apt-get.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
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
#: Bound on one snakemake run on the test cluster (the whole default DAG on 2 loaded cores).
RUN_TIMEOUT = 1800

# Distinctive per-model resources: the sbatch requests must show exactly these.
RIDGE = {"mem_mb": 2100, "runtime": 17, "threads": 2}
SHAREDBACKBONE = {"mem_mb": 2600, "runtime": 23}


def tiny_config() -> dict:
    """The default config (default models) shrunk: 2 subjects, 1 ROI, small volumes."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config.update(
        subjects=["01", "02"],
        sessions=["01", "02"],
        runs=["01", "02"],
        rois=["V1"],
        feature_models=["gabor", "caption"],
    )
    params = config.setdefault("model_params", {})
    params.setdefault("ridge", {}).update(RIDGE)
    params.setdefault("sharedbackbone", {}).update(SHAREDBACKBONE)
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


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(ROOT / "Snakefile"),
        "--directory", str(workdir),
        "--configfile", str(workdir / "config.yaml"),
        *args,
    ]  # fmt: skip


#: What a cluster run adds to the profile here: this node answers at once (a real cluster
#: keeps the plugin's 40 s before the first status check and 60 s of latency-wait).
CLUSTER_ARGS = (
    "--profile", str(ROOT / "cluster"),
    "--latency-wait", "5",
    "--slurm-init-seconds-before-status-checks", "2",
)  # fmt: skip


def run_snakemake(workdir: Path, *args: str, env: dict | None = None) -> str:
    """Run the real workflow in ``workdir`` (config.yaml there); return its output."""
    result = subprocess.run(
        snakemake_cmd(workdir, *args),
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=RUN_TIMEOUT,
    )  # fmt: skip
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


def start_cluster(state: Path, gpus: int = 0) -> dict:
    """Bring the one-node cluster up in ``state``; the environment that points at it."""
    reason = _cannot_install_reason()
    if reason:
        print(f"SKIP test_cluster: {reason}")
        pytest.skip(reason)
    setup = subprocess.run(
        ["bash", str(SCRIPTS / "setup_slurm.sh"), str(state),
         "--partition", PARTITION, "--account", ACCOUNT, "--gpus", str(gpus)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if setup.returncode == 3:  # the script could not install the packages
        print(f"SKIP test_cluster: {setup.stderr.strip()}")
        pytest.skip(setup.stderr.strip())
    assert setup.returncode == 0, f"setup_slurm.sh failed:\n{setup.stderr[-4000:]}"
    env = dict(
        os.environ,
        BRAINPIPE_SLURM_PARTITION=PARTITION,
        BRAINPIPE_SLURM_ACCOUNT=ACCOUNT,
    )
    for line in (state / "env.sh").read_text().splitlines():  # SLURM_CONF, what it enforces
        key, value = line.removeprefix("export ").split("=", 1)
        env[key] = value
    return env


def stop_cluster(state: Path) -> None:
    subprocess.run(
        ["bash", str(SCRIPTS / "teardown_slurm.sh"), str(state), "--remove"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running one-node cluster without GPUs; yields the environment for SLURM tools."""
    state = Path(tempfile.mkdtemp(prefix="brainpipe-slurm-", dir="/tmp"))
    try:
        yield start_cluster(state)
    finally:
        stop_cluster(state)


@pytest.fixture(scope="session")
def local_run(tmp_path_factory) -> Path:
    """The tiny config with the default models, run locally: the reference for every test."""
    if _cannot_install_reason():  # no cluster to compare with: do not spend the minutes
        pytest.skip(_cannot_install_reason())
    local = tmp_path_factory.mktemp("local")
    (local / "config.yaml").write_text(yaml.safe_dump(tiny_config()))
    run_snakemake(local, "--cores", "2")
    return local


@pytest.fixture(scope="module")
def cluster_run(slurm_cluster, tmp_path_factory):
    """The same config on SLURM, the site running GPU jobs on CPU; (dir, output, jobs)."""
    on_slurm = tmp_path_factory.mktemp("slurm")
    (on_slurm / "config.yaml").write_text(yaml.safe_dump(tiny_config()))
    first = last_job_id(slurm_cluster)
    env = dict(slurm_cluster, BRAINPIPE_SLURM_GPU_FALLBACK="cpu")
    output = run_snakemake(on_slurm, *CLUSTER_ARGS, env=env)
    return on_slurm, output, sacct(slurm_cluster, after=first)


# --- SLURM accounting and the machine's processes -------------------------------------------

SACCT_FIELDS = ["job", "partition", "account", "state", "req", "alloc", "limit", "comment"]


def sacct(env: dict, after: int = 0) -> pd.DataFrame:
    """Allocations (one row per job, not steps) with job id > ``after``."""
    out = subprocess.run(
        ["sacct", "--allusers", "--allocations", "--noheader", "--parsable2",
         "--starttime", "now-1days",
         "--format", "JobIDRaw,Partition,Account,State,ReqTRES,AllocTRES,Timelimit,Comment%200"],
        capture_output=True, text=True, env=env, check=True, timeout=60,
    ).stdout  # fmt: skip
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    jobs = pd.DataFrame(rows, columns=SACCT_FIELDS)
    jobs["job"] = jobs["job"].astype(int)
    return jobs[jobs["job"] > after].reset_index(drop=True)


def last_job_id(env: dict) -> int:
    jobs = sacct(env)
    return int(jobs["job"].max()) if len(jobs) else 0


def squeue(env: dict, states: str | None = None) -> list[tuple[str, str, str]]:
    """(job id, state, comment) of the jobs in ``states``; default: not finished yet."""
    out = subprocess.run(
        ["squeue", "-h", *(["-t", states] if states else []), "-o", "%i|%T|%k"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    ).stdout
    return [tuple(line.split("|", 2)) for line in out.splitlines() if line.strip()]


def processes_in(workdir: Path) -> list[str]:
    """Processes (pid and command) whose working directory is ``workdir`` (jobs run there)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if Path(os.readlink(proc / "cwd")) == workdir:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append(f"{proc.name}: {cmd[:200]}")
        except OSError:
            continue
    return found


def assert_nothing_left(env: dict, workdir: Path) -> None:
    """No job in SLURM's queue and, after a short grace, no process working in ``workdir``."""
    assert squeue(env) == [], f"jobs left in the queue: {squeue(env)}"
    deadline = time.monotonic() + 30  # slurmstepd reaps a cancelled step within KillWait (5 s)
    while processes_in(workdir) and time.monotonic() < deadline:
        time.sleep(1)
    assert processes_in(workdir) == [], f"processes left behind: {processes_in(workdir)}"


def read_summary(workdir: Path) -> pd.DataFrame:
    return pd.read_csv(workdir / "results" / "synthetic" / "summary.tsv", sep="\t", dtype=str)


def assert_same_summary(local: Path, other: Path) -> None:
    a, b = read_summary(local), read_summary(other)
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


def request(row: pd.Series) -> dict[str, str]:
    """ReqTRES as a mapping: {'cpu': '2', 'mem': '2100M', ...}."""
    return dict(item.split("=", 1) for item in row["req"].split(",") if "=" in item)


# --- the default models on the cluster ----------------------------------------------------------


def test_gpu_request_without_gpus_is_refused_before_submission(slurm_cluster, tmp_path):
    """The default models include a torch model asking for a GPU; this cluster has none."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_config()))
    first = last_job_id(slurm_cluster)
    env = dict(slurm_cluster)
    env.pop("BRAINPIPE_SLURM_GPU_FALLBACK", None)
    started = time.monotonic()
    result = subprocess.run(
        snakemake_cmd(tmp_path, *CLUSTER_ARGS),
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    for part in ("GpuUnavailableError", "rule pretrain", "model sharedbackbone",
                 "model_params.sharedbackbone.gpu", "gpu_fallback: cpu"):  # fmt: skip
        assert part in output, (part, output[-3000:])
    assert len(sacct(slurm_cluster, after=first)) == 0, "jobs were submitted before the error"
    print(f"GPU request refused after {time.monotonic() - started:.0f} s")
    assert_nothing_left(slurm_cluster, tmp_path)


def test_default_models_complete_on_slurm(cluster_run, slurm_cluster):
    on_slurm, output, jobs = cluster_run
    assert len(jobs) > 0, "sacct lists no jobs"
    assert (jobs["state"] == "COMPLETED").all(), jobs.to_string()
    assert set(jobs["partition"]) == {PARTITION} and set(jobs["account"]) == {ACCOUNT}
    comments = " ".join(jobs["comment"])
    for rule in ("download", "validate_inputs", "preprocess", "betas", "features", "align",
                 "pretrain", "summary", "report"):  # fmt: skip
        assert f"rule_{rule}" in comments, (rule, comments)
    # One group job per model chain (train -> evaluate), never two chains in one job.
    config = tiny_config()
    n_chains = sum(1 for _ in (on_slurm / "results" / "synthetic" / "models").glob("sub-*/*/*"))
    assert n_chains >= len(config["models"]) * len(config["subjects"])
    assert comments.count("rule_models_evaluate_train") == n_chains, comments
    assert (on_slurm / "results" / "synthetic" / "report.html").exists()
    assert_nothing_left(slurm_cluster, on_slurm)


def test_cluster_results_equal_local_results(cluster_run, local_run):
    assert_same_summary(local_run, cluster_run[0])


def test_model_params_resources_reach_sbatch(cluster_run):
    """`model_params.<m>.mem_mb/runtime/threads` are what SLURM was asked for (sacct)."""
    jobs = cluster_run[2]
    pretrain = jobs[jobs["comment"].str.startswith("rule_pretrain")]
    assert len(pretrain) == 1
    req = request(pretrain.iloc[0])
    assert req["mem"] == f"{SHAREDBACKBONE['mem_mb']}M" and req["cpu"] == "1", req
    assert pretrain.iloc[0]["limit"] == f"00:{SHAREDBACKBONE['runtime']}:00"
    assert "gres/gpu" not in pretrain.iloc[0]["req"]  # the site runs GPU jobs on CPU here
    # A ridge chain asks for what its two jobs need: ridge's threads and memory (above
    # evaluate's 2000 MB), ridge's runtime plus evaluate's 10 min.
    groups = jobs[jobs["comment"].str.startswith("rule_models")]
    ridge = groups[groups["req"].str.contains(f"mem={RIDGE['mem_mb']}M")]
    assert len(ridge) == 2 * 1 * 2, groups.to_string()  # subjects x ROIs x feature models
    for _, row in ridge.iterrows():
        assert request(row)["cpu"] == str(RIDGE["threads"]), row.to_dict()
        assert row["limit"] == f"00:{RIDGE['runtime'] + 10}:00", row.to_dict()
    # Rules not changed behind their backs: summary asks for what its rule declares.
    summary = jobs[jobs["comment"].str.startswith("rule_summary")].iloc[0]
    assert request(summary)["mem"] == "1000M" and summary["limit"] == "00:05:00"
