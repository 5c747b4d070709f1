"""Job resources (brainpipe.resources) and the SLURM plugin fixes carried in cluster/patches.

Fast: no cluster. The same behaviour on a real SLURM cluster is tested in test_cluster.py.
"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import pytest
import yaml

from brainpipe.resources import (
    GpuUnavailableError,
    check_gpu_request,
    memory_for_attempt,
    parse_sinfo_gres,
    per_attempt,
)

from .conftest import ROOT


def test_memory_grows_with_the_attempt():
    assert [memory_for_attempt(1500, a) for a in (1, 2, 3)] == [1500, 3000, 4500]
    assert per_attempt(700)(None, 2) == 1400
    with pytest.raises(ValueError, match="attempt"):
        memory_for_attempt(1000, 0)


@pytest.mark.parametrize(
    ("sinfo", "gpus"),
    [
        ("(null)\n", 0),
        ("", 0),
        ("gpu:1\n", 1),
        ("gpu:a100:4(S:0-1)\ngpu:2\n(null)\n", 6),
        ("shard:8,gpu:2\n", 2),
        ("mps:100\n", 0),
    ],
)
def test_gpus_counted_from_sinfo(sinfo, gpus):
    assert parse_sinfo_gres(sinfo) == gpus


def test_gpu_request_without_gpus_names_rule_model_and_keys():
    with pytest.raises(GpuUnavailableError) as err:
        check_gpu_request("pretrain", "sharedbackbone", 1, cluster_gpus=0)
    message = str(err.value)
    for part in (
        "rule pretrain",
        "model sharedbackbone",
        "gpu=1",
        "model_params.sharedbackbone.gpu",
        "gpu_fallback: cpu",
        "BRAINPIPE_SLURM_GPU_FALLBACK=cpu",
    ):
        assert part in message, part
    # a cluster with GPUs, an unknown cluster, or no GPU asked for: the request stands
    assert check_gpu_request("train", "attention", 1, cluster_gpus=2) == 1
    assert check_gpu_request("train", "attention", 1, cluster_gpus=None) == 1
    assert check_gpu_request("train", "ridge", 0, cluster_gpus=0) == 0
    # network feature jobs name their own key
    with pytest.raises(GpuUnavailableError, match=r"rule features \(model clip\).*features\.gpu"):
        check_gpu_request("features", "clip", 1, cluster_gpus=0, key="features.gpu")


def _cluster_profile(monkeypatch, **env) -> dict:
    """cluster/config.yaml as Snakemake reads it (a yte template over the environment)."""
    from yte import process_yaml

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with open(ROOT / "cluster" / "config.yaml") as f:
        return process_yaml(f)


def test_profiles_leave_resources_to_the_rules(monkeypatch):
    """One home per resource: no profile sets a rule's threads, memory or runtime."""
    default = yaml.safe_load((ROOT / "profiles" / "default" / "config.yaml").read_text())
    assert not {"set-resources", "set-threads", "default-resources"} & set(default)
    cluster = _cluster_profile(monkeypatch, BRAINPIPE_SLURM_GPU_FALLBACK="error")
    assert not {"set-resources", "set-threads", "group-components"} & set(cluster)
    # the site's GPU fallback replaces the GPU request of the GPU-capable rules, nothing else
    cpu = _cluster_profile(monkeypatch, BRAINPIPE_SLURM_GPU_FALLBACK="cpu")
    assert cpu["set-resources"] == {
        "pretrain": {"gpu": 0},
        "train": {"gpu": 0},
        "meeg_train": {"gpu": 0},
        "features": {"gpu": 0},
    }
    with pytest.raises(Exception, match="gpu_fallback"):
        _cluster_profile(monkeypatch, BRAINPIPE_SLURM_GPU_FALLBACK="maybe")


def test_dry_run_takes_resources_from_model_params(tmp_path):
    """`model_params.<m>.mem_mb/runtime/threads` become the train job's resources."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config.update(models=["ridge"], rois=["V1"], feature_models=["gabor"], subjects=["01"])
    config["model_params"] = {"ridge": {"mem_mb": 3100, "runtime": 17, "threads": 2}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
         "--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml"),
         "-n", "--cores", "2", "--forcerun", "train"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    train = text[text.index("rule train:") :].split("\n\n", 1)[0]
    assert "mem_mb=3100" in train and "runtime=17" in train, train
    assert "threads: 2" in train, train
    evaluate = text[text.index("rule evaluate:") :].split("\n\n", 1)[0]
    assert "mem_mb=2000" in evaluate and "runtime=10" in evaluate, evaluate  # as declared


# --- the SLURM executor plugin, patched (cluster/patches/README.md) ---------------------------


def _patched_plugin():
    try:
        from snakemake_executor_plugin_slurm import job_status_query
    except ImportError:  # pragma: no cover - the plugin is a declared dependency
        pytest.fail("snakemake-executor-plugin-slurm is not installed")
    if not hasattr(job_status_query, "normalize_job_state"):
        pytest.fail(
            f"snakemake-executor-plugin-slurm {version('snakemake-executor-plugin-slurm')} is "
            "not patched: run `sh cluster/patches/apply.sh .venv/bin/python` (make install does)"
        )
    return job_status_query


def test_plugin_reads_cancelled_by_uid_as_cancelled():
    query = _patched_plugin()
    assert query.normalize_job_state("CANCELLED by 0") == "CANCELLED"
    assert query.normalize_job_state(" COMPLETED ") == "COMPLETED"
    assert query.normalize_job_state("") == ""


def test_plugin_status_query_parses_sacct_output(tmp_path):
    """The real query coroutine on sacct-shaped output: a cancelled job is CANCELLED."""
    import asyncio
    import logging

    query = _patched_plugin()
    fake = tmp_path / "sacct"
    fake.write_text("#!/bin/sh\nprintf '12|CANCELLED by 0\\n13|RUNNING\\n14|OUT_OF_MEMORY\\n'\n")
    fake.chmod(0o755)
    status, _ = asyncio.run(query.query_job_status(str(fake), logging.getLogger("test")))
    assert status == {"12": "CANCELLED", "13": "RUNNING", "14": "OUT_OF_MEMORY"}


def test_plugin_never_excludes_none_assigned():
    query = _patched_plugin()
    assert query.parse_failed_nodes("None assigned\n") == set()
    assert query.parse_failed_nodes("(null)") == set()
    assert query.parse_failed_nodes("node07\n") == {"node07"}


def test_status_loop_stops_sleeping_at_shutdown():
    """The executor's sleep between status checks ends as soon as shutdown() is called, so one
    Ctrl-C (cancel -> shutdown, which joins the status thread) does not wait for it."""
    import asyncio
    import threading
    import time
    from types import SimpleNamespace

    from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor

    if not hasattr(RemoteExecutor, "_sleep_unless_stopped"):
        pytest.fail(
            "snakemake-interface-executor-plugins "
            f"{version('snakemake-interface-executor-plugins')} is not patched: run "
            "`sh cluster/patches/apply.sh .venv/bin/python` (make install does)"
        )
    executor = SimpleNamespace(_stop_waiting=threading.Event())
    threading.Timer(0.3, executor._stop_waiting.set).start()
    started = time.monotonic()
    asyncio.run(RemoteExecutor._sleep_unless_stopped(executor, 120))
    assert time.monotonic() - started < 60  # returned at the stop, not after 120 s
    executor._stop_waiting.clear()
    started = time.monotonic()
    asyncio.run(RemoteExecutor._sleep_unless_stopped(executor, 0.3))  # no stop: the full sleep
    assert time.monotonic() - started >= 0.3


def test_remote_executor_removes_an_earlier_runs_logs_before_submission(tmp_path):
    """A remote job's logs are removed in the main process before it is submitted (a local job's
    are removed when it is prepared), so a job that never starts on the cluster (submission
    failed, cancelled while pending, an earlier job of its group failed) has no log from an
    earlier run for --show-failed-logs to print as its own."""
    from types import SimpleNamespace

    from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor

    if not hasattr(RemoteExecutor, "remove_stale_logs"):
        pytest.fail(
            "snakemake-interface-executor-plugins "
            f"{version('snakemake-interface-executor-plugins')} is not patched: run "
            "`sh cluster/patches/apply.sh .venv/bin/python` (make install does)"
        )
    logs = {name: tmp_path / "logs" / f"{name}.log" for name in ("train", "evaluate", "other")}
    for path in logs.values():
        path.parent.mkdir(exist_ok=True)
        path.write_text("written by an earlier run\n")

    def job(name: str) -> SimpleNamespace:
        return SimpleNamespace(log=[str(logs[name])], is_group=lambda: False)

    group = SimpleNamespace(jobs=[job("train"), job("evaluate")], is_group=lambda: True)
    RemoteExecutor.remove_stale_logs(None, group)  # every job of a group job
    assert not logs["train"].exists() and not logs["evaluate"].exists()
    assert logs["other"].exists()  # a job not being submitted keeps its log
    RemoteExecutor.remove_stale_logs(None, job("other"))
    RemoteExecutor.remove_stale_logs(None, job("other"))  # no log there: nothing to do
    assert not logs["other"].exists()


def test_scheduler_waits_in_slices_so_one_ctrl_c_is_seen():
    """Snakemake's scheduler waits for its next event in 1 s slices (cluster/patches): a lock
    wait without a timeout sees only a SIGINT delivered to the main thread, and the kernel may
    deliver a Ctrl-C to any of Snakemake's threads (tests/test_cluster.py runs one Ctrl-C)."""
    import inspect

    from snakemake.scheduling.job_scheduler import JobScheduler

    source = inspect.getsource(JobScheduler.schedule)
    if "self._open_jobs.acquire(timeout=1)" not in source:
        pytest.fail(
            f"snakemake {version('snakemake')} is not patched: run "
            "`sh cluster/patches/apply.sh .venv/bin/python` (make install does)"
        )
    assert "self._open_jobs.acquire()\n" not in source
