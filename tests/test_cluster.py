"""The SLURM profile on a real one-node cluster (munge, slurmdbd + MariaDB, slurmctld, slurmd).

``cluster/local_slurm/setup_slurm.sh`` installs Debian's packages and starts the daemons once
for the module (cgroup memory enforcement where the machine allows it, 1 s accounting, DOWN
nodes stay DOWN until resumed, one fake GPU); the module fixture always runs
``teardown_slurm.sh`` after, on failure too. The synthetic pipeline with the default models
runs locally once: the reference for everything below.

1. The fault run (the node has its GPU): a copy of the local run loses one model chain and
   the shared-backbone pretraining (asking for the GPU, with too little memory), and only
   those go to SLURM: one Ctrl-C, then a rerun in which the chain's job is cancelled
   (``scancel``), its script killed (SIGKILL) and its node set DOWN then resumed, one fault
   per attempt. Each fault has its own test on the record of that run; the run must end
   with the local results, with no job and no process left behind.
2. The default models (the node's GPU removed): the GPU request is refused before
   submission; with the CPU fallback every job completes, the summary equals the local one,
   and ``sacct`` shows the requests the rules and ``model_params`` declare and every job's
   peak memory.

Skipped (with the reason) only where SLURM cannot be installed: not root, or no apt-get.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
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
#: Bound on the fault run (one model chain and one pretraining, their faults and retries;
#: then two more chains, one of them failing).
FAULT_TIMEOUT = 1200

# Distinctive per-model resources: the sbatch requests must show exactly these.
RIDGE = {"mem_mb": 2100, "runtime": 17, "threads": 2}
SHAREDBACKBONE = {"mem_mb": 2600, "runtime": 23}
# What the fault run reruns on SLURM (deleted from a copy of the local run): one ridge chain
# (train -> evaluate, one group job) and one shared-backbone pretraining (a GPU job).
CHAIN = "models/sub-01/V1/ridge-gabor"
PRETRAIN = "models/shared/all/sharedbackbone-caption"
#: The pretraining's memory in the fault run, below what the job uses (torch alone is more):
#: the cgroup kills attempt 1, and attempt k asks for k x this.
PRETRAIN_MEM_MB = 350
#: Seconds snakemake may take to exit after one Ctrl-C (its next status check is 300 s away).
CTRL_C_BOUND = 120
#: The fault run's last phase reruns two chains of other subjects and models, one group job at a
#: time: the first to run fails (its script killed, no retries); the other must still complete.
OTHER_CHAINS = ("models/sub-02/V1/ridge-gabor", "models/sub-01/all/ridgedecoder-caption")
#: Appended to those chains' logs from the local run: no failed-job report may print it.
STALE = "STALE LOG: written by an earlier run, not by this one"


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


class Clusters:
    """The module's one SLURM cluster: brought up once with a (fake) GPU, for the fault run
    and the GPU request; then its node's GPU is removed (``scontrol update gres=gpu:0``,
    which SLURM allows only downwards) for the tests of a cluster without GPUs. Tests that
    need the GPU therefore come first in this file; out of order, the cluster is restarted."""

    def __init__(self) -> None:
        self.state: Path | None = None
        self.gpus: int | None = None
        self.env: dict = {}

    def up(self, gpus: int) -> dict:
        """The running cluster with ``gpus`` (0 or 1) GPUs on its node."""
        if self.state is not None and self.gpus == 1 and gpus == 0:
            subprocess.run(
                ["scontrol", "update", f"nodename={_node(self.env)}", "gres=gpu:0"],
                env=self.env, check=True, timeout=60,
            )  # fmt: skip
            self.gpus = 0
            self.env["BRAINPIPE_SLURM_GPUS"] = "0"
        if self.state is None or self.gpus != gpus:
            self.down()
            self.state = Path(tempfile.mkdtemp(prefix="brainpipe-slurm-", dir="/tmp"))
            self.gpus = gpus
            self.env = start_cluster(self.state, gpus=gpus)
        return self.env

    def down(self) -> None:
        if self.state is not None:
            stop_cluster(self.state)
        self.state = self.gpus = None


@pytest.fixture(scope="module")
def clusters():
    """Owns the cluster of this module; always torn down, on failure too."""
    owner = Clusters()
    try:
        yield owner
    finally:
        owner.down()


@pytest.fixture(scope="module")
def gpu_cluster(clusters):
    """The one-node cluster with one fake GPU (gres/gpu); the environment for SLURM tools."""
    return clusters.up(gpus=1)


@pytest.fixture(scope="module")
def slurm_cluster(clusters):
    """The same cluster without GPUs (sinfo lists gpu:0, sbatch refuses --gpus)."""
    return clusters.up(gpus=0)


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


# --- faults: one run on the cluster with a (fake) GPU ----------------------------------------
#
# A copy of the local run loses one ridge chain and one shared-backbone pretraining; only
# those go to SLURM, the pretraining with too little memory. Phase 1 presses Ctrl-C (one
# SIGINT to snakemake's process group, as a terminal does) while the first job runs. Phase 2
# reruns and hits the chain's group job three times in turn: scancel, SIGKILL of its script
# process, its node set DOWN (then resumed). Each test below checks one of these in the
# record of that single run; the last checks that it ended with the local results.


@dataclass
class FaultRun:
    workdir: Path
    returncode: int | None = None
    output: str = ""
    seconds: float = 0.0
    jobs: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: job id hit by each fault: "ctrl-c", "scancel", "sigkill", "node-down"
    hit: dict[str, str] = field(default_factory=dict)
    ctrl_c: dict = field(default_factory=dict)
    node_state_while_down: str = ""
    #: last job id before phase 2 (the Ctrl-C phase's jobs are older)
    before_phase2: int = 0
    #: last job id before phase 3 (one of two chains fails): phase 2's jobs are older
    before_phase3: int = 0
    left: list[str] = field(default_factory=list)
    #: phase 3: returncode, output, seconds, the chain that failed and its job, the other chain
    keep_going: dict = field(default_factory=dict)


def _start(workdir: Path, env: dict, targets: list[str], log: Path, *args: str):
    cmd = snakemake_cmd(workdir, *CLUSTER_ARGS, *args)
    cmd[3:3] = targets  # before --configfile, which takes every following word as a file
    with log.open("w") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True
        )


def _wait_running(env: dict, proc: subprocess.Popen, prefix: str, seen: set, deadline: float):
    """Id of a RUNNING job whose comment starts with ``prefix`` and is not in ``seen``."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"snakemake exited ({proc.returncode}) before a {prefix} job ran")
        for job, _state, comment in squeue(env, "RUNNING"):
            if comment.startswith(prefix) and job not in seen:
                return job
        time.sleep(0.3)
    raise AssertionError(f"no new {prefix} job ran within the bound")


def _job_of(pid: str) -> str | None:
    """The SLURM job a process belongs to, from its cgroup (proctrack/cgroup) or environment."""
    try:
        found = re.search(r"/job_(\d+)(/|$)", Path(f"/proc/{pid}/cgroup").read_text(), re.M)
        if found:
            return found.group(1)
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"SLURM_JOB_ID="):
            return item.split(b"=", 1)[1].decode()
    return None


def _kill_script_of(job: str, workdir: Path, deadline: float) -> str:
    """SIGKILL the rule script (.snakemake/scripts/tmp*.py) that ``job`` runs; its command."""
    while time.monotonic() < deadline:
        for line in processes_in(workdir):
            pid, cmd = line.split(": ", 1)
            if ".snakemake/scripts/tmp" in cmd and _job_of(pid) == job:
                os.kill(int(pid), signal.SIGKILL)
                return cmd
        time.sleep(0.1)
    raise AssertionError(f"job {job} never ran a rule script")


def _node(env: dict, field: str = "%N") -> str:
    return subprocess.run(
        ["sinfo", "-h", "-N", "-o", field],
        capture_output=True, text=True, env=env, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip


def _leftovers(env: dict, workdir: Path, grace: float = 30) -> list[str]:
    """Jobs still queued and processes still working in ``workdir``, after a short grace."""
    deadline = time.monotonic() + grace
    while True:
        left = [f"job {j} {s}" for j, s, _ in squeue(env)] + processes_in(workdir)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(1)


def _stop(proc: subprocess.Popen, env: dict) -> None:
    """Never leave snakemake or its jobs running after a failed test."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    subprocess.run(["scancel", "--user", "root"], env=env, timeout=60)


@pytest.fixture(scope="module")
def fault_run(gpu_cluster, local_run, tmp_path_factory) -> FaultRun:
    env = dict(gpu_cluster)
    env.pop("BRAINPIPE_SLURM_GPU_FALLBACK", None)  # the pretraining asks for the GPU
    workdir = tmp_path_factory.mktemp("faults") / "run"
    shutil.copytree(local_run, workdir, symlinks=True)
    results = workdir / "results" / "synthetic"
    shutil.rmtree(results / CHAIN)
    shutil.rmtree(results / PRETRAIN)
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["model_params"]["sharedbackbone"]["mem_mb"] = PRETRAIN_MEM_MB
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    targets = [
        f"results/synthetic/{CHAIN}/metrics.json",
        f"results/synthetic/{PRETRAIN}/pretrained-without-01.safetensors",
    ]
    run = FaultRun(workdir)
    first = last_job_id(env)
    started = time.monotonic()
    deadline = started + FAULT_TIMEOUT

    # Phase 1: Ctrl-C while the first job runs. The first status check is set 300 s away, as
    # on a real cluster where checks are minutes apart: one Ctrl-C must not wait for it.
    log = workdir / "ctrl-c.out"
    proc = _start(workdir, env, targets, log, "--slurm-init-seconds-before-status-checks", "300")
    try:
        job = _wait_running(env, proc, "rule_", set(), deadline)
        run.hit["ctrl-c"] = job
        time.sleep(2)
        pressed = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=CTRL_C_BOUND)
            run.ctrl_c["seconds"] = time.monotonic() - pressed
        except subprocess.TimeoutExpired:
            run.ctrl_c["seconds"] = None  # still running: stopped below, the test fails
            _stop(proc, env)
        run.ctrl_c.update(
            returncode=proc.returncode, output=log.read_text(), left=_leftovers(env, workdir)
        )
    except BaseException:
        _stop(proc, env)
        raise
    if run.ctrl_c["seconds"] is None:
        # Killed, not stopped: its lock on the working directory stays. Only the Ctrl-C test
        # fails for that; the other faults are still tried on an unlocked directory.
        run_snakemake(workdir, "--unlock", env=env)
    # The chain's job may have run to the end before the Ctrl-C landed (on two cores it can
    # start first and hold the node while the pretrain job waits): phase 2 needs its
    # attempts, so its outputs go again, as at the start.
    shutil.rmtree(results / CHAIN, ignore_errors=True)

    # Phase 2: scancel, SIGKILL, node DOWN, each on the next running attempt of the chain.
    run.before_phase2 = last_job_id(env)
    log = workdir / "faults.out"
    proc = _start(workdir, env, targets, log)
    try:
        seen = set(run.hit.values())
        job = run.hit["scancel"] = _wait_running(env, proc, "rule_models", seen, deadline)
        time.sleep(2)
        subprocess.run(["scancel", job], env=env, check=True, timeout=60)
        seen.add(job)
        job = run.hit["sigkill"] = _wait_running(env, proc, "rule_models", seen, deadline)
        _kill_script_of(job, workdir, deadline)
        seen.add(job)
        job = run.hit["node-down"] = _wait_running(env, proc, "rule_models", seen, deadline)
        time.sleep(2)
        scontrol = ["scontrol", "update", f"nodename={_node(env)}"]
        subprocess.run([*scontrol, "state=down", "reason=brainpipe-test"], env=env, check=True,
                       timeout=60)  # fmt: skip
        try:
            time.sleep(5)
            run.node_state_while_down = _node(env, "%T")  # stays down until resumed
        finally:
            subprocess.run([*scontrol, "state=resume"], env=env, check=True, timeout=60)
        proc.wait(timeout=max(1, deadline - time.monotonic()))
    except BaseException:
        _stop(proc, env)
        raise
    run.returncode = proc.returncode
    run.output = log.read_text()
    run.seconds = time.monotonic() - started
    run.before_phase3 = last_job_id(env)
    run.keep_going = _one_model_fails(workdir, env, deadline)
    run.jobs = sacct(env, after=first)
    run.left = _leftovers(env, workdir)
    elapsed = dict(
        line.split("|")
        for line in subprocess.run(
            ["sacct", "--allocations", "--noheader", "--parsable2", "--format", "JobIDRaw,Elapsed",
             "-j", ",".join(str(j) for j in run.jobs["job"])],
            capture_output=True, text=True, env=env, timeout=60,
        ).stdout.split()
    )  # fmt: skip
    states = ", ".join(
        f"{r.job} {r.comment.split('_wildcards')[0]} {r.state} {elapsed.get(str(r.job))}"
        for r in run.jobs.itertuples()
    )
    print(
        f"fault run: {run.seconds:.0f} s (Ctrl-C phase included), then "
        f"{run.keep_going['seconds']:.0f} s for one failing chain of two; hit {run.hit}; {states}"
    )
    return run


def _chain_logs(chain: str) -> list[Path]:
    """The train and evaluate logs of a chain ``models/sub-S/ROI/MODEL-FEATURES``."""
    _, subject, roi, name = chain.split("/")
    return [Path("logs", "synthetic", stage, f"{subject}_{roi}_{name}.log")
            for stage in ("train", "evaluate")]  # fmt: skip


def _one_model_fails(workdir: Path, env: dict, deadline: float) -> dict:
    """Phase 3: rerun OTHER_CHAINS, one group job at a time (``--jobs 1``), without retries and
    with ``--show-failed-logs``; SIGKILL the script of the first to run. The other chain is
    submitted only after that failure, so it completes only because the profile keeps going.
    Their logs from the local run are marked STALE first: the report of the failed chain must
    show this run's logs (or say there are none), never those."""
    results = workdir / "results" / "synthetic"
    for chain in OTHER_CHAINS:
        shutil.rmtree(results / chain)
        for path in _chain_logs(chain):
            assert (workdir / path).exists(), path  # written by the local run
            with (workdir / path).open("a") as f:
                f.write(f"{STALE}\n")
    log = workdir / "one-model-fails.out"
    targets = [f"results/synthetic/{chain}/metrics.json" for chain in OTHER_CHAINS]
    started = time.monotonic()
    proc = _start(workdir, env, targets, log, "--jobs", "1", "--retries", "0",
                  "--show-failed-logs")  # fmt: skip
    try:
        job = _wait_running(env, proc, "rule_models", set(), deadline)
        _kill_script_of(job, workdir, deadline)
        proc.wait(timeout=max(1, deadline - time.monotonic()))
    except BaseException:
        _stop(proc, env)
        raise
    done = [c for c in OTHER_CHAINS if (results / c / "metrics.json").exists()]
    return dict(
        returncode=proc.returncode,
        output=log.read_text(),
        seconds=time.monotonic() - started,
        killed_job=job,
        failed=[c for c in OTHER_CHAINS if c not in done],
        completed=done,
    )


def _phase2(run: FaultRun, rule: str) -> pd.DataFrame:
    """The jobs of ``rule`` (``models``: the group) in phase 2 (the faults), oldest first."""
    jobs = run.jobs[(run.jobs["job"] > run.before_phase2) & (run.jobs["job"] <= run.before_phase3)]
    return jobs[jobs["comment"].str.startswith(f"rule_{rule}")]


def _row(run: FaultRun, fault: str) -> pd.Series:
    rows = run.jobs[run.jobs["job"] == int(run.hit[fault])]
    assert len(rows) == 1, run.jobs.to_string()
    return rows.iloc[0]


def test_ctrl_c_cancels_the_jobs_and_exits(fault_run, gpu_cluster):
    """One Ctrl-C: snakemake cancels its SLURM jobs and exits, without a traceback."""
    ctrl_c = fault_run.ctrl_c
    assert ctrl_c["seconds"] is not None, (
        f"snakemake still ran {CTRL_C_BOUND} s after one Ctrl-C:\n{ctrl_c['output'][-3000:]}"
    )
    print(f"Ctrl-C: snakemake exited {ctrl_c['seconds']:.1f} s after one SIGINT")
    assert ctrl_c["returncode"] != 0, ctrl_c["output"][-3000:]
    assert "Traceback" not in ctrl_c["output"], ctrl_c["output"][-6000:]
    assert ctrl_c["left"] == [], ctrl_c["left"]
    assert _row(fault_run, "ctrl-c")["state"].startswith("CANCELLED"), fault_run.jobs.to_string()


def test_scancel_of_a_running_job_is_retried(fault_run):
    assert _row(fault_run, "scancel")["state"].startswith("CANCELLED by"), fault_run.jobs
    assert fault_run.returncode == 0, fault_run.output[-6000:]


def test_sigkill_of_a_job_process_is_retried(fault_run):
    assert _row(fault_run, "sigkill")["state"] == "FAILED", fault_run.jobs.to_string()
    assert fault_run.returncode == 0, fault_run.output[-6000:]


def test_node_down_requeues_the_job_until_the_node_is_back(fault_run, gpu_cluster):
    """SLURM requeues the job (same id); the run follows it and excludes no node."""
    assert fault_run.node_state_while_down.startswith("down"), fault_run.node_state_while_down
    job = fault_run.hit["node-down"]
    records = subprocess.run(
        ["sacct", "--duplicates", "--allocations", "--noheader", "--parsable2", "-j", job,
         "--format", "JobIDRaw,State"],
        capture_output=True, text=True, env=gpu_cluster, check=True, timeout=60,
    ).stdout.split()  # fmt: skip
    states = [r.split("|")[1] for r in records]
    assert states[-1] == "COMPLETED" and len(states) >= 2, states  # requeued, then completed
    assert states[0] in ("NODE_FAIL", "REQUEUED"), states
    assert "None assigned" not in fault_run.output and "--exclude" not in fault_run.output
    # three attempts of the one chain in phase 2: the requeued job was not submitted twice
    groups = _phase2(fault_run, "models")
    assert len(groups) == 3, groups.to_string()


def test_job_over_its_memory_is_retried_with_more(fault_run, gpu_cluster):
    """The pretraining over its --mem is killed by the cgroup, retried with attempt x mem_mb."""
    if gpu_cluster.get("BRAINPIPE_SLURM_CGROUP") != "v1":
        pytest.skip("this machine gives SLURM no cgroup: memory is not enforced (setup_slurm.sh)")
    pretrain = _phase2(fault_run, "pretrain")
    # The cgroup's OOM killer hits the batch step (the job is OUT_OF_MEMORY) or the rule's srun
    # step (that step is OUT_OF_MEMORY, the job FAILED): either way attempt 1 was killed for it.
    steps = subprocess.run(
        ["sacct", "--noheader", "--parsable2", "--format", "JobID,State",
         "-j", str(pretrain.iloc[0]["job"])],
        capture_output=True, text=True, env=gpu_cluster, check=True, timeout=60,
    ).stdout.split()  # fmt: skip
    assert any(step.endswith("|OUT_OF_MEMORY") for step in steps), steps
    assert pretrain.iloc[-1]["state"] == "COMPLETED", pretrain.to_string()
    mems = [request(row)["mem"] for _, row in pretrain.iterrows()]
    # Attempt 1 asks for model_params.sharedbackbone.mem_mb or, as a model holding its ROI's
    # betas, what brainpipe sizes from the betas store if that is more (ModelSpec.job_mem_mb:
    # 701 MB here); attempt k asks for k times that.
    first = int(mems[0].removesuffix("M"))
    assert first >= PRETRAIN_MEM_MB, mems
    assert mems == [f"{first * k}M" for k in range(1, len(mems) + 1)], mems


def test_gpu_job_gets_the_gpu(fault_run):
    """On a cluster with a GPU and no fallback, the pretraining asks for and gets it."""
    pretrain = _phase2(fault_run, "pretrain")
    done = pretrain[pretrain["state"] == "COMPLETED"]
    assert len(done) == 1, pretrain.to_string()
    assert "gres/gpu=1" in done.iloc[0]["req"] and "gres/gpu=1" in done.iloc[0]["alloc"]
    groups = fault_run.jobs[fault_run.jobs["comment"].str.startswith("rule_models")]
    assert not groups["alloc"].str.contains("gpu").any(), groups.to_string()  # ridge: none


def _same_numbers(a, b, where: str) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _same_numbers(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same_numbers(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=where)
    else:
        assert a == b, where


def test_fault_run_ends_with_the_local_results(fault_run, local_run, gpu_cluster):
    """Completed despite every fault, with what the local run computed; nothing left behind."""
    from safetensors.numpy import load_file

    assert fault_run.returncode == 0, fault_run.output[-6000:]
    local, here = local_run / "results" / "synthetic", fault_run.workdir / "results" / "synthetic"
    metrics = f"{CHAIN}/metrics.json"
    _same_numbers(
        json.loads((local / metrics).read_text()), json.loads((here / metrics).read_text()), metrics
    )
    for path in sorted((local / PRETRAIN).glob("*.safetensors")):
        ours = load_file(here / PRETRAIN / path.name)
        for name, array in load_file(path).items():
            np.testing.assert_allclose(ours[name], array, rtol=1e-5, atol=1e-6, err_msg=name)
    assert fault_run.left == [], fault_run.left


def test_a_failing_model_leaves_the_other_chains_running(fault_run, local_run):
    """One model chain fails (its job killed, no retries left); the other subject's chain of
    another model, submitted only after that failure (one job at a time), still runs to the
    local results: the profile sets keep-going. The failure is reported, with its SLURM log."""
    run = fault_run.keep_going
    assert run["returncode"] != 0, run["output"][-6000:]  # the run says a job failed
    assert len(run["failed"]) == 1 and len(run["completed"]) == 1, run
    phase3 = fault_run.jobs[fault_run.jobs["job"] > fault_run.before_phase3]
    assert phase3["comment"].str.startswith("rule_models").all(), phase3.to_string()
    assert list(phase3["state"]) == ["FAILED", "COMPLETED"], phase3.to_string()
    assert str(phase3.iloc[0]["job"]) == run["killed_job"], phase3.to_string()
    metrics = f"{run['completed'][0]}/metrics.json"
    local, here = local_run / "results" / "synthetic", fault_run.workdir / "results" / "synthetic"
    _same_numbers(
        json.loads((local / metrics).read_text()), json.loads((here / metrics).read_text()), metrics
    )
    output = run["output"]
    assert "Error in group models" in output, output[-6000:]
    # --show-failed-logs printed the failed job's own SLURM log (the group's rule scripts' output)
    assert re.search(rf"^Logfile \S+/{run['killed_job']}\.log:$", output, re.M), output[-6000:]


def test_failed_logs_shown_are_this_runs(fault_run):
    """--show-failed-logs shows no log an earlier run left: the failed chain's evaluate job never
    started in this run, so its log from the local run must not be printed as if it were its
    own; the report says that it wrote none."""
    run = fault_run.keep_going
    output = run["output"]
    assert STALE not in output, output[-6000:]
    evaluate_log = _chain_logs(run["failed"][0])[1]
    assert (
        f"No log was written in this run for rule evaluate (the job did not start, or stopped "
        f"before writing it): {evaluate_log}"
    ) in output, output[-6000:]


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


def max_rss_mb(env: dict, jobs: pd.DataFrame) -> dict[int, float | None]:
    """Peak memory (MB) of each job in ``sacct``: the largest MaxRSS of its steps (the batch
    step runs Snakemake, the rule runs in an srun step); None when every step is blank."""
    out = subprocess.run(
        ["sacct", "--noheader", "--parsable2", "--format", "JobIDRaw,MaxRSS",
         "-j", ",".join(str(j) for j in jobs["job"])],
        capture_output=True, text=True, env=env, check=True, timeout=60,
    ).stdout  # fmt: skip
    peaks: dict[int, float | None] = {}
    for line in out.split():
        step, rss = line.split("|")
        if "." in step:
            job, peak = int(step.split(".")[0]), _mb(rss)
            if peak is not None and (peaks.get(job) or 0) < peak:
                peaks[job] = peak
            peaks.setdefault(job, None)
    return peaks


def _mb(size: str) -> float | None:
    """'2100M', '350124K', '2G' in MB; None for a blank field."""
    units = {"K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0**2}
    return float(size[:-1]) * units[size[-1]] if size and size[-1] in units else None


def test_sacct_reports_every_jobs_memory(cluster_run, slurm_cluster):
    """1 s accounting: sacct has the peak memory of every job, short ones too, and each is
    below what the job asked for (a figure to size `mem_mb` by)."""
    jobs = cluster_run[2]
    peaks = max_rss_mb(slurm_cluster, jobs)
    print("MaxRSS (MB) per rule:", {c.split("_wildcards")[0]: peaks.get(j) for j, c in zip(
        jobs["job"], jobs["comment"], strict=True)})  # fmt: skip
    for _, row in jobs.iterrows():
        peak = peaks.get(row["job"])
        assert peak is not None and peak > 10, (row["comment"], peak)
        assert peak < _mb(request(row)["mem"]), (row["comment"], peak)


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
