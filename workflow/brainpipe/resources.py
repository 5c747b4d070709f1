"""Job resources: the one place rules get their memory, and how GPU requests meet the cluster.

Every rule declares its own ``threads`` and ``resources`` (the model-zoo rules read them from
``model_params.<model>``); profiles add only defaults for rules that declare none. Two
policies live here so that they are the same for every rule and testable without Snakemake:

* memory grows with the attempt: attempt *k* asks for *k* times the declared ``mem_mb``, so
  a job the cluster killed for exceeding its memory is retried with more (within the
  profile's ``retries``); a local run (attempt 1) gets exactly what the rule declares;
* a GPU request on a SLURM cluster without GPUs is an error at submission that names the
  rule, the model, the config key that asks for the GPU and the profile key that would run
  the job on the CPU instead (:func:`check_gpu_request`).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

#: The cluster profile's site key (and its environment variable) that runs GPU jobs on CPU.
GPU_FALLBACK_KEY = "site.gpu_fallback: cpu in cluster/config.yaml"
GPU_FALLBACK_ENV = "BRAINPIPE_SLURM_GPU_FALLBACK=cpu"


class GpuUnavailableError(RuntimeError):
    """A job asks for GPUs that the cluster it is submitted to does not have."""


def memory_for_attempt(mem_mb: int, attempt: int) -> int:
    """Memory (MB) a job asks for at ``attempt`` (1-based): ``attempt`` × ``mem_mb``.

    Parameters
    ----------
    mem_mb : int
        What the rule (or ``model_params.<model>.mem_mb``) declares.
    attempt : int
        Snakemake's attempt counter: 1 for the first submission, 2 for the first retry...

    Returns
    -------
    int
        The request for this attempt; exactly ``mem_mb`` on the first.
    """
    if mem_mb < 1 or attempt < 1:
        raise ValueError(f"mem_mb ({mem_mb}) and attempt ({attempt}) must be >= 1")
    return int(mem_mb) * int(attempt)


def per_attempt(mem_mb: int) -> Callable[..., int]:
    """A Snakemake resource function: ``mem_mb`` on the first attempt, grown on each retry."""

    def mem(wildcards: Any, attempt: int) -> int:
        return memory_for_attempt(mem_mb, attempt)

    return mem


def parse_sinfo_gres(text: str) -> int:
    """Total GPUs in ``sinfo -h -N -o %G`` output (one generic-resource field per node).

    Fields look like ``gpu:4``, ``gpu:a100:4(S:0-1)``, ``gpu:2,shard:8`` or ``(null)``;
    only ``gpu`` entries count.
    """
    total = 0
    for line in text.splitlines():
        for entry in line.strip().split(","):
            entry = entry.split("(", 1)[0].strip()
            parts = entry.split(":")
            if parts[0] != "gpu" or len(parts) < 2:
                continue
            count = parts[-1]
            total += int(count) if count.isdigit() else 1
    return total


@functools.cache
def slurm_cluster_gpus() -> int | None:
    """GPUs SLURM reports on the cluster's nodes (``sinfo``); ``None`` when sinfo cannot say."""
    if shutil.which("sinfo") is None:
        return None
    try:
        result = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%G"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return parse_sinfo_gres(result.stdout)


def check_gpu_request(
    rule: str, model: str, gpus: int, cluster_gpus: int | None, key: str | None = None
) -> int:
    """The GPUs a job of ``rule`` for ``model`` asks for, or an error if the cluster has none.

    Parameters
    ----------
    rule, model : str
        Names that go into the message.
    gpus : int
        ``model_params.<model>.gpu``.
    cluster_gpus : int or None
        GPUs on the cluster the job is submitted to (:func:`slurm_cluster_gpus`); ``None`` when
        unknown (the request then goes to SLURM as it is).
    key : str, optional
        The config key that asks for the GPUs (default ``model_params.<model>.gpu``; network
        feature jobs: ``features.gpu``).

    Raises
    ------
    GpuUnavailableError
        When ``gpus`` > 0 and the cluster has no GPU at all.
    """
    key = key or f"model_params.{model}.gpu"
    if gpus > 0 and cluster_gpus == 0:
        raise GpuUnavailableError(
            f"rule {rule} (model {model}) asks for resource gpu={gpus} "
            f"(config key {key}), but this SLURM cluster has no GPU "
            "(sinfo lists no gres/gpu on any node), so sbatch would refuse the job. "
            f"Set {key}: 0, or run GPU jobs on the CPU with the profile key "
            f"{GPU_FALLBACK_KEY} (or the environment variable {GPU_FALLBACK_ENV})."
        )
    return int(gpus)
