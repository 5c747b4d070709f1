"""The local weight cache: fetched and verified once, before any feature job runs.

Feature jobs may run on GPU nodes without internet, so they never download: the
``weights`` rule (a local rule, on the submit host) fetches each configured network's
published files into ``features.weights_dir`` — by default the libraries' usual caches
(torch hub's ``checkpoints/`` folder, the Hugging Face hub cache) — verifies their
checksums and writes a manifest. Before any job starts, the workflow checks that every
file a configured network needs is there, and otherwise stops with an error naming the
missing file and the command that fetches it (:func:`check_weights_present`).

Checksums follow each publisher's own scheme:

- torch hub (torchvision): the file name carries the first hex digits of the file's
  SHA-256 (``resnet50-11ad3fa6.pth``), the convention behind ``check_hash=True``;
- Hugging Face hub: the cache names each blob by its ETag, which is the SHA-256 of
  large (LFS) files and the git blob SHA-1 of small ones; both are recomputed here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from brainpipe.errors import BrainpipeInputError
from brainpipe.features.networks import WeightFile, get_network
from brainpipe.storage import atomic_path, write_text_atomic

log = logging.getLogger(__name__)

FETCH_COMMAND = "snakemake --cores 1 weights"
"""The command that fills the cache (printed in the missing-weights error)."""

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


def is_weight_tensor_file(path: Path) -> bool:
    """True for the parameter files (not needed when a network runs with random weights)."""
    return Path(path).suffix in WEIGHT_SUFFIXES


def network_settings(features_cfg: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The ``features.networks`` block with defaults filled in, by feature label.

    Each entry: ``network`` (registry name, default the label), ``layers`` (default the
    network's ``default_layers``), ``tokens`` (layers also stored as tokens, default
    none), ``readout`` (layer behind the ``features`` variable, default the last layer),
    ``weights`` (``pretrained`` or ``random``), ``seed``.
    """
    cfg = dict(features_cfg or {})
    out: dict[str, dict[str, Any]] = {}
    for label, entry in (cfg.get("networks") or {}).items():
        entry = dict(entry or {})
        source = f"config features.networks.{label}"
        net = get_network(entry.get("network", label), source, "network")
        layers = list(entry.get("layers") or net.default_layers)
        for key, names in (("layers", layers), ("tokens", entry.get("tokens") or [])):
            bad = [lay for lay in names if lay not in net.layers]
            if bad:
                raise BrainpipeInputError(
                    source,
                    key,
                    f"{net.name} has no layer {bad[0]!r}; its layers: {', '.join(net.layers)}",
                )
        tokens = [lay for lay in (entry.get("tokens") or []) if lay not in layers]
        if tokens:
            raise BrainpipeInputError(source, "tokens", f"{tokens[0]!r} is not in layers")
        readout = entry.get("readout", layers[-1])
        if readout not in layers:
            raise BrainpipeInputError(source, "readout", f"{readout!r} is not in layers {layers}")
        weights = entry.get("weights", "pretrained")
        if weights not in ("pretrained", "random"):
            raise BrainpipeInputError(
                source, "weights", f"got {weights!r}; expected 'pretrained' or 'random'"
            )
        out[label] = {
            "network": net.name,
            "layers": layers,
            "tokens": list(entry.get("tokens") or []),
            "readout": readout,
            "weights": weights,
            "seed": int(entry.get("seed", 0)),
        }
    return out


def weights_dir(features_cfg: Mapping[str, Any] | None) -> Path | None:
    """``features.weights_dir`` (None: the libraries' usual caches)."""
    value = (features_cfg or {}).get("weights_dir")
    return Path(value).expanduser() if value else None


def required_files(settings: Mapping[str, Any], wdir: Path | None) -> list[WeightFile]:
    """Files one configured network needs (parameters only when ``weights: pretrained``)."""
    files = get_network(settings["network"]).weight_files(wdir)
    if settings["weights"] == "random":
        files = [f for f in files if not is_weight_tensor_file(f.path)]
    return files


def needs_files(features_cfg: Mapping[str, Any] | None, label: str) -> bool:
    """True if configured network ``label`` reads any file from the cache."""
    settings = network_settings(features_cfg)[label]
    return bool(required_files(settings, weights_dir(features_cfg)))


def missing_files(features_cfg: Mapping[str, Any] | None, labels: Sequence[str]) -> list[Path]:
    """Files the networks behind ``labels`` need that are not in the cache."""
    nets = network_settings(features_cfg)
    wdir = weights_dir(features_cfg)
    missing = []
    for label in labels:
        if label in nets:
            missing += [f.path for f in required_files(nets[label], wdir) if not f.path.is_file()]
    return missing


def check_weights_present(features_cfg: Mapping[str, Any] | None, labels: Sequence[str]) -> None:
    """Raise before any job runs if a configured network's weight file is missing.

    Raises
    ------
    BrainpipeInputError
        Naming the first missing file, how many are missing, and :data:`FETCH_COMMAND`.
    """
    raise_if_missing(missing_files(features_cfg, labels), "network weights", "feature jobs")


def raise_if_missing(missing: Sequence[str | Path], what: str, jobs: str) -> None:
    """Raise, naming the first of ``missing`` files and :data:`FETCH_COMMAND`, if any.

    ``what`` names the files (``"network weights"``), ``jobs`` the jobs that need them and
    never download them.
    """
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise BrainpipeInputError(
            str(missing[0]),
            "(file)",
            f"{what} are missing{more}; {jobs} never download. Fetch and "
            f"verify them once, on a machine with internet, with: {FETCH_COMMAND}",
        )


# --------------------------------------------------------------------------- checksums


def file_sha256(path: Path, block: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """Git's object id of a file (``sha1("blob <size>\\0" + content)``)."""
    data = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def verify_file(wf: WeightFile) -> str:
    """Check ``wf.path`` against its publisher's checksum; return its SHA-256.

    Raises
    ------
    BrainpipeInputError
        The file is missing or its checksum differs (message: expected and found).
    """
    path = Path(wf.path)
    if not path.is_file():
        raise BrainpipeInputError(str(path), "(file)", f"missing; fetch it with: {FETCH_COMMAND}")
    sha = file_sha256(path)
    kind, _, expected = wf.checksum.partition(":")
    if kind == "sha256" and sha != expected:
        found = sha
    elif kind == "sha256-prefix" and not sha.startswith(expected):
        found = sha[: len(expected)]
    elif kind == "hf-etag":
        blob = Path(os.path.realpath(path)).name  # the hub cache names blobs by ETag
        found = sha if len(blob) == 64 else git_blob_sha1(path)
        expected = blob
    else:
        return sha
    if found != expected:
        raise BrainpipeInputError(
            str(path),
            "checksum",
            f"{kind} {found} does not match the published {expected}; delete the file and "
            f"fetch it again with: {FETCH_COMMAND}",
        )
    return sha


# --------------------------------------------------------------------------- fetching


def download(url: str, dest: Path, retries: int = 3, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically (temporary file, then rename), with retries."""
    last: Exception | None = None
    for attempt in range(1, retries + 1):
        try:
            with atomic_path(dest) as tmp:
                with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
                    shutil.copyfileobj(resp, out, 8 << 20)
            return dest
        except OSError as err:
            last = err
            log.warning("download %s failed (attempt %d/%d): %s", url, attempt, retries, err)
    raise OSError(f"{url}: download failed after {retries} attempts: {last}")


def fetch_file(wf: WeightFile) -> None:
    """Bring ``wf`` into the cache with its library's own downloader if it is not there."""
    if Path(wf.path).is_file():
        return
    if wf.checksum == "hf-etag":  # hub cache layout: blobs/ + snapshots/ + refs/
        from huggingface_hub import hf_hub_download

        parts = Path(wf.path).parts
        repo_dir = next(p for p in parts if p.startswith("models--"))
        repo_id = repo_dir.removeprefix("models--").replace("--", "/")
        cache = Path(*parts[: parts.index(repo_dir)])
        # the file's path inside the repo (``unet/config.json``): after snapshots/<commit>/
        inside = parts[parts.index("snapshots") + 2 :] if "snapshots" in parts else parts[-1:]
        hf_hub_download(repo_id, "/".join(inside), cache_dir=str(cache))
    else:
        download(wf.url, Path(wf.path))


def fetch_weights(
    features_cfg: Mapping[str, Any] | None, label: str, manifest: Path | None = None
) -> dict[str, Any]:
    """Fetch (if missing) and verify every file network ``label`` needs; write a manifest.

    Returns
    -------
    manifest : dict
        ``{"label", "network", "files": [{"path", "url", "sha256"}]}``, also written as
        JSON to ``manifest`` when given.
    """
    settings = network_settings(features_cfg)[label]
    files = []
    for wf in required_files(settings, weights_dir(features_cfg)):
        fetch_file(wf)
        sha = verify_file(wf)
        log.info("verified %s (sha256 %s)", wf.path, sha)
        files.append({"path": str(wf.path), "url": wf.url, "sha256": sha})
    record = {"label": label, "network": settings["network"], "files": files}
    if manifest is not None:
        write_text_atomic(json.dumps(record, indent=2) + "\n", manifest)
    return record


# --------------------------------------------------------------------------- rule helpers


def weights_input(features_cfg: Mapping[str, Any] | None, manifests: str) -> Any:
    """Input function of the ``features`` rule: the verified-weights manifest it waits for.

    Evaluated while the DAG is built: a missing weight file stops the run there, before
    any job, naming the file and the command that fetches it (``snakemake weights``, whose
    DAG has no feature job, is not stopped).
    """
    nets = network_settings(features_cfg)

    def get(wildcards: Any) -> list[str]:
        label = wildcards.features
        if label not in nets:
            return []
        check_weights_present(features_cfg, [label])
        return [f"{manifests}/{label}.json"] if needs_files(features_cfg, label) else []

    return get


def network_resource(features_cfg: Mapping[str, Any] | None, key: str, default: int, net: int):
    """Resource function: ``features.<key>`` (default ``net``) for networks, else ``default``.

    ``mem_mb`` grows with each retry (:func:`brainpipe.resources.memory_for_attempt`).
    """
    from brainpipe.resources import memory_for_attempt

    cfg = dict(features_cfg or {})
    nets = cfg.get("networks") or {}

    def get(wildcards: Any, attempt: int = 1) -> int:
        value = int(cfg.get(key, net)) if wildcards.features in nets else default
        return memory_for_attempt(value, attempt) if key == "mem_mb" else value

    return get
