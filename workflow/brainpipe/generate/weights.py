"""Weights the generation stage reads: requests of the feature networks' ``weights`` rule.

Generation jobs (like feature jobs) may run on GPU nodes without internet, so they never
download: every published file they need is a request of the ``weights`` rule
(``rules/features.smk``), which fetches it into ``features.weights_dir`` (default the
libraries' usual caches), verifies its checksum (:func:`brainpipe.features.weights.verify_file`)
and writes a manifest the generation rules wait for. Before any job starts, a missing
file stops the run naming it and the fetch command.

Requests, one manifest each (``<results>/weights/<label>.json``):

- ``generatevae`` / ``generateunet``: ``generate.weights`` and
  ``generate.diffusion.weights`` when they name a Hugging Face repo (not a local folder):
  the Stable-Diffusion-layout files ``vae/`` resp. ``unet/`` + ``scheduler/``;
- ``generatenet<network>``: a registry network (``generate.diffusion.embedding``,
  ``generate.networks``) with ``weights: pretrained``: its published files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from brainpipe.features.networks import WeightFile, get_network, hf_weight_files
from brainpipe.features.weights import (
    fetch_file,
    raise_if_missing,
    verify_file,
    weights_dir,
)
from brainpipe.storage import write_text_atomic

#: Files of a Stable-Diffusion-layout hub repo each component needs (diffusers' layout).
VAE_FILES = ("vae/config.json", "vae/diffusion_pytorch_model.safetensors")
UNET_FILES = (
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "scheduler/scheduler_config.json",
)


def is_local(source: str | None) -> bool:
    """True if ``source`` is a local folder (used as is, nothing to fetch)."""
    return bool(source) and Path(str(source)).expanduser().is_dir()


def metric_networks(p: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``generate.networks`` plus the single ``generate.network`` (older key), defaults filled."""
    nets = list(p.get("networks") or [])
    if p.get("network"):
        nets.append(p["network"])
    out = []
    for i, n in enumerate(nets):
        get_network(n["network"], f"config generate.networks[{i}]", "network")
        out.append({"seed": 0, "weights": "random", **n})
    return out


def requests(p: Mapping[str, Any], features_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """Files to fetch, by manifest label: ``{label: (what, [WeightFile])}``.

    Parameters
    ----------
    p : mapping
        The ``generate`` block over its defaults (:func:`brainpipe.generate.jobs.generate_params`).
    features_cfg : mapping
        The ``features`` block (its ``weights_dir`` is the shared cache).
    """
    wdir = weights_dir(features_cfg)
    out: dict[str, Any] = {}
    if p.get("weights") and not is_local(p["weights"]):
        out["generatevae"] = (p["weights"], hf_weight_files(p["weights"], VAE_FILES)(wdir))
    diff = p.get("diffusion") or {}
    if diff.get("weights") and not is_local(diff["weights"]):
        out["generateunet"] = (
            diff["weights"],
            hf_weight_files(diff["weights"], UNET_FILES)(wdir),
        )
    nets = metric_networks(p) + ([diff["embedding"]] if diff else [])
    for n in nets:
        if n.get("weights", "random") == "pretrained":
            out[f"generatenet{n['network']}"] = (
                n["network"],
                get_network(n["network"]).weight_files(wdir),
            )
    return out


def check_present(p: Mapping[str, Any], features_cfg: Mapping[str, Any] | None) -> None:
    """Raise before any job runs if a file the generation stage needs is not in the cache."""
    for _label, (_what, files) in requests(p, features_cfg).items():
        missing = [f.path for f in files if not Path(f.path).is_file()]
        raise_if_missing(missing, "generation weights", "generation jobs")


def fetch(
    p: Mapping[str, Any],
    features_cfg: Mapping[str, Any] | None,
    label: str,
    manifest: str | Path | None = None,
) -> dict[str, Any]:
    """Fetch (if missing) and verify the files of request ``label``; write its manifest."""
    what, files = requests(p, features_cfg)[label]
    rows = []
    for wf in files:
        wf = WeightFile(Path(wf.path), wf.url, wf.checksum)
        fetch_file(wf)
        rows.append({"path": str(wf.path), "url": wf.url, "sha256": verify_file(wf)})
    record = {"label": label, "source": what, "files": rows}
    if manifest is not None:
        write_text_atomic(json.dumps(record, indent=2) + "\n", manifest)
    return record
