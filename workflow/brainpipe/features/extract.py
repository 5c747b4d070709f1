"""Network features: stream stimuli through a network, then PCA fitted on training stimuli.

One job per configured network (``features.networks.<label>``):

1. The stimuli stream in batches through a DataLoader whose workers decode and
   preprocess them (:mod:`brainpipe.features.stimuli`) while the network runs; each
   requested layer is written as it comes, row block by row block, to a scratch Zarr
   store beside the output — ``(stimulus, feature)`` flat activations and, for layers in
   ``tokens``, ``(stimulus, token, channel)``. Activations are stored as float16 unless a
   value exceeds ±10,000 in the first batch (float16 tops out at 65,504); the relative
   rounding error ``||x - fp16(x)|| / ||x||`` of every layer is measured on all stimuli
   and kept in the store's attributes.
2. Each layer's PCA is fitted on the training rows only, out of core
   (:func:`brainpipe.features.pca.fit_pca_out_of_core`), and every stimulus is projected.
3. ``features/{label}.zarr`` holds, per layer ``L`` (dots become underscores):
   ``L(stimulus, L_component)`` PCA scores, ``L_pca_mean``, ``L_pca_components``,
   ``L_explained_variance_ratio``; ``L_tokens(stimulus, L_token, L_channel)`` for token
   layers; and ``features(stimulus, feature)``, the scores of the ``readout`` layer, which
   the models read.

Runs on the GPU when one is present (``features.device: auto``), on the CPU otherwise;
the batch size follows the job's memory (:func:`batch_size_for`).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from brainpipe.backend import device_name
from brainpipe.compute import chunk_bytes_for, chunk_size_for
from brainpipe.config import schema_default
from brainpipe.errors import BrainpipeInputError
from brainpipe.features.networks import Loaded, get_network, layer_variable, layer_views
from brainpipe.features.pca import (
    fit_pca_out_of_core,
    read_stimuli_and_splits,
    transform_blocks,
)
from brainpipe.features.stimuli import StimulusDataset
from brainpipe.features.weights import network_settings, weights_dir
from brainpipe.storage import atomic_path, provenance_attrs, quiet_consolidated

log = logging.getLogger(__name__)

FP16_SAFE = 1e4
"""Largest |activation| in the first batch for which a layer is stored as float16."""


def pick_device(requested: str = "auto") -> str:
    """``"cuda"`` when requested or (``auto``) available, else ``"cpu"``; ``cuda`` without
    a GPU is an error naming ``features.device`` (:func:`brainpipe.backend.device_name`)."""
    return device_name(requested, key="features.device")


def batch_size_for(
    sample_bytes: int, mem_mb: float, model_bytes: int = 0, lo: int = 1, hi: int = 256
) -> int:
    """Batch size whose activations fit half the job's memory beside the model.

    Parameters
    ----------
    sample_bytes : int
        Peak working memory of one stimulus through the network (input and outputs of the
        read layers, times a safety factor the caller chose).
    mem_mb : float
        The job's memory (``resources.mem_mb``), or free GPU memory on CUDA.
    """
    # half of what the model leaves (the other half: decoded batches and workers' queues)
    budget = chunk_bytes_for(mem_mb, overhead_mb=model_bytes / 1e6, multiplier=2)
    return int(min(hi, max(lo, budget // max(sample_bytes, 1))))


def _row_blocks(arr: Any, rows: int) -> Any:
    def blocks() -> Iterator[tuple[int, np.ndarray]]:
        for s in range(0, arr.shape[0], rows):
            yield s, arr[s : s + rows]

    return blocks


def extract_layers(
    loaded: Loaded,
    dataset: StimulusDataset,
    layers: list[str],
    tokens: list[str],
    readout: str,
    scratch: Path,
    *,
    device: str,
    batch_size: int,
    num_workers: int,
) -> dict[str, dict[str, Any]]:
    """Run every stimulus through the network; write each layer to the ``scratch`` store.

    Returns
    -------
    info : dict
        Per layer: ``dtype``, ``n_features``, ``fp16_relative_error``, token shape.
    """
    import torch
    import zarr
    from torch.utils.data import DataLoader

    n = len(dataset)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=loaded.collate,
        pin_memory=device == "cuda",
        prefetch_factor=4 if num_workers else None,
        persistent_workers=False,
    )
    if loaded.module is not None:
        loaded.module.to(device)
    group = zarr.open_group(str(scratch), mode="w", zarr_format=3)
    arrays: dict[str, Any] = {}
    info: dict[str, dict[str, Any]] = {}
    err2 = dict.fromkeys(layers, 0.0)
    norm2 = dict.fromkeys(layers, 0.0)
    row = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for batch in loader:
            outs = loaded.forward(batch, layers, device)
            b = None
            for lay in layers:
                kind = lay.rstrip("0123456789")
                flat, tok = layer_views(outs[lay], loaded.readouts.get(kind, readout))
                flat = flat.float()
                b = flat.shape[0]
                name = layer_variable(lay)
                if name not in arrays:
                    peak = float(flat.abs().max())
                    dtype = "float16" if peak < FP16_SAFE else "float32"
                    p = int(flat.shape[1])
                    rows = max(1, min(n, (32 << 20) // (p * 2)))
                    arrays[name] = group.create_array(
                        name,
                        shape=(n, p),
                        chunks=(rows, p),
                        dtype=dtype,
                        dimension_names=("stimulus", f"{name}_raw"),
                    )
                    info[lay] = {"dtype": dtype, "n_features": p, "rows_per_chunk": rows}
                    if lay in tokens and tok is not None:
                        t, c = int(tok.shape[1]), int(tok.shape[2])
                        arrays[name + "_tokens"] = group.create_array(
                            name + "_tokens",
                            shape=(n, t, c),
                            chunks=(max(1, min(n, (32 << 20) // (t * c * 2))), t, c),
                            dtype="float16" if dtype == "float16" else "float32",
                            dimension_names=("stimulus", f"{name}_token", f"{name}_channel"),
                        )
                        info[lay]["tokens"] = [t, c]
                    elif lay in tokens:
                        raise BrainpipeInputError(
                            "config", "tokens", f"layer {lay!r} has no token or spatial axis"
                        )
                x = flat.cpu()
                if info[lay]["dtype"] == "float16":
                    if float(x.abs().max()) > 65000:
                        raise ValueError(
                            f"layer {lay!r}: activations exceed float16's range after the "
                            "first batch (stored as float16); please report this network and layer"
                        )
                    h = x.half()
                    err2[lay] += float(((x - h.float()) ** 2).sum())
                    norm2[lay] += float((x**2).sum())
                    arrays[name][row : row + b] = h.numpy()
                else:
                    arrays[name][row : row + b] = x.numpy()
                if name + "_tokens" in arrays:
                    arrays[name + "_tokens"][row : row + b] = (
                        tok.to("cpu", torch.float32).numpy().astype(arrays[name + "_tokens"].dtype)
                    )
            row += b or 0
            log.info(
                "%d/%d stimuli, %.1f stimuli/s", row, n, row / max(time.perf_counter() - t0, 1e-9)
            )
    for lay in layers:
        info[lay]["fp16_relative_error"] = (
            math.sqrt(err2[lay] / norm2[lay]) if norm2[lay] > 0 else 0.0
        )
    return info


def _sample_bytes(loaded: Loaded, dataset: StimulusDataset, layers: list[str]) -> int:
    """Working memory of one stimulus, from a one-stimulus probe through the network."""
    import torch

    item = dataset[0]
    batch = loaded.collate([item])
    with torch.inference_mode():
        outs = loaded.forward(batch, layers, "cpu")
    in_bytes = sum(
        t.numel() * 4
        for t in (batch.values() if isinstance(batch, dict) else [batch])
        if hasattr(t, "numel")
    )
    out_bytes = sum(o.numel() * 4 for o in outs.values())
    # intermediate activations of a forward pass: ~40x the input image for CNNs / ViTs
    return int(40 * in_bytes + 3 * out_bytes) or 1 << 20


def build_network_store(
    label: str,
    stimuli_tsv: Path,
    splits_tsv: Path,
    out_path: Path,
    features_cfg: Mapping[str, Any],
    *,
    threads: int = 1,
    mem_mb: float = 4000,
    config: dict[str, Any] | None = None,
) -> Path:
    """Extract the configured layers of network ``label``, fit PCA on training stimuli.

    Parameters
    ----------
    label : str
        Key of ``features.networks`` (the ``{features}`` wildcard).
    stimuli_tsv, splits_tsv : Path
        Stimuli table (paths relative to its folder) and stimulus → split table.
    out_path : Path
        ``features/{label}.zarr``, written atomically.
    features_cfg : mapping
        The ``features:`` config block (``networks``, ``n_components``, ``weights_dir``,
        ``device``, ``batch_size``, ``num_workers``, ``keep_raw``).
    threads, mem_mb : int, float
        The job's resources: loader workers and batch size follow them.

    Returns
    -------
    out_path : Path
    """
    import torch
    import zarr

    settings = network_settings(features_cfg)
    if label not in settings:
        raise BrainpipeInputError(
            "config", f"features.networks.{label}", "no such network is configured"
        )
    cfg = settings[label]
    net = get_network(cfg["network"])
    device = pick_device(str(features_cfg.get("device", "auto")))
    torch.set_num_threads(max(1, threads))
    stim = read_stimuli_and_splits(Path(stimuli_tsv), Path(splits_tsv))
    train = (stim["split"] == "train").to_numpy()
    if train.sum() < 2:
        raise BrainpipeInputError(
            str(splits_tsv), "split", f"need at least 2 'train' stimuli, got {int(train.sum())}"
        )
    loaded = net.builder(cfg["weights"] == "pretrained", weights_dir(features_cfg), cfg["seed"])
    dataset = StimulusDataset(stim, Path(stimuli_tsv).parent, net.modality, loaded.preprocess)
    dataset.check()
    layers, readout_default = cfg["layers"], net.default_readout
    batch_size = features_cfg.get("batch_size")
    if not batch_size:
        model_bytes = (
            sum(p.numel() * p.element_size() for p in loaded.module.parameters())
            if loaded.module is not None
            else 0
        )
        budget = mem_mb
        if device == "cuda":
            budget = torch.cuda.mem_get_info()[0] / 1e6
        batch_size = batch_size_for(_sample_bytes(loaded, dataset, layers), budget, model_bytes)
        dataset.close()  # the probe's HDF5 handle must not cross into forked workers
    workers = features_cfg.get("num_workers")
    workers = max(1, threads - 1) if workers is None else int(workers)
    log.info(
        "%s (%s %s, %s weights): %d stimuli, layers %s, device %s, batch %d, %d workers",
        label,
        net.library,
        net.name,
        cfg["weights"],
        len(stim),
        layers,
        device,
        batch_size,
        workers,
    )
    out_path = Path(out_path)
    scratch = out_path.with_name(f".{out_path.name}.raw")
    if scratch.exists():
        shutil.rmtree(scratch)
    try:
        info = extract_layers(
            loaded,
            dataset,
            layers,
            cfg["tokens"],
            readout_default,
            scratch,
            device=device,
            batch_size=int(batch_size),
            num_workers=workers,
        )
        del loaded
        raw = zarr.open_group(str(scratch), mode="r")
        n_components = int(
            features_cfg.get("n_components") or schema_default("features.n_components")
        )
        data_vars: dict[str, Any] = {}
        coords: dict[str, Any] = {
            "stimulus": stim["stimulus"].to_numpy(dtype=object),
            "split": ("stimulus", stim["split"].to_numpy(dtype=object)),
        }
        for lay in layers:
            name = layer_variable(lay)
            arr = raw[name]
            p = arr.shape[1]
            # a sixteenth of the job's memory per block of float32 rows: a block lives as
            # read, as float32 and as a mask while the next is read (benchmarks/features.py)
            rows = chunk_size_for(mem_mb, p * 4, overhead_mb=0, multiplier=16, n_items=len(stim))
            blocks = _row_blocks(arr, rows)
            params = fit_pca_out_of_core(blocks, train, p, n_components, device=device)
            scores = transform_blocks(params, blocks, len(stim), device=device)
            k = params.n_components
            data_vars[name] = (("stimulus", f"{name}_component"), scores)
            data_vars[f"{name}_pca_mean"] = ((f"{name}_raw",), params.mean.astype(np.float32))
            data_vars[f"{name}_pca_components"] = (
                (f"{name}_component", f"{name}_raw"),
                params.components.astype(np.float32),
            )
            data_vars[f"{name}_explained_variance_ratio"] = (
                (f"{name}_component",),
                params.explained_variance_ratio,
            )
            info[lay]["n_components"] = k
            log.info(
                "%s: %d raw features (%s, fp16 rel. error %.2e) -> %d PCA components (%.1f%%)",
                lay,
                p,
                info[lay]["dtype"],
                info[lay]["fp16_relative_error"],
                k,
                100 * params.explained_variance_ratio.sum(),
            )
            if lay == cfg["readout"]:
                data_vars["features"] = (("stimulus", "feature"), scores)
                coords["feature"] = np.arange(k, dtype=np.int64)
        ds = xr.Dataset(
            data_vars,
            coords=coords,
            attrs={
                "feature_model": label,
                "network": net.name,
                "library": net.library,
                "weights": cfg["weights"],
                "layers": [layer_variable(lay) for lay in layers],
                "readout": layer_variable(cfg["readout"]),
                "layer_info": {layer_variable(k): v for k, v in info.items()},
                "fitted_on": "train",
                "n_fit_stimuli": int(train.sum()),
                "n_components_requested": n_components,
                **provenance_attrs(config),
            },
        )
        with atomic_path(out_path) as tmp, quiet_consolidated():
            from brainpipe.storage import portable_strings

            portable_strings(ds).to_zarr(tmp, mode="w", consolidated=False, zarr_format=3)
            for lay in cfg["tokens"]:  # move the token arrays in, no copy
                name = layer_variable(lay) + "_tokens"
                os.replace(scratch / name, Path(tmp) / name)
            zarr.consolidate_metadata(str(tmp))
        if features_cfg.get("keep_raw"):
            os.replace(scratch, out_path.with_name(f"{out_path.stem}.raw.zarr"))
    finally:
        if scratch.exists():
            shutil.rmtree(scratch)
    return out_path


def layer_activations(
    network: str,
    layer: str,
    images: np.ndarray,
    seed: int = 0,
    batch: int = 32,
    tokens: bool = False,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    pretrained: bool = False,
    weights_dir: Path | None = None,
    vector_token: bool = False,
) -> np.ndarray:
    """Flat activations (or the token view) of one layer of a network, in memory.

    For the synthetic world: the same builder, preprocessing and readout as
    :func:`build_network_store` with ``weights: random`` and the same ``seed``, so the
    feature job recovers exactly the layer that generated the responses. With
    ``pretrained`` the builder reads the published weights from the local cache
    (``weights_dir``, as the ``weights`` rule filled it; never downloaded).

    Parameters
    ----------
    images : ndarray of uint8, shape (n, height, width, 3)
    tokens : bool
        Return the layer's token view ``(n, n_tokens, n_channels)`` (every token of a
        transformer layer, every position of a conv map), the array the feature job stores
        as ``L_tokens``, instead of the flat readout.
    transform : callable, optional
        Applied to each batch's float32 array before it is kept (e.g. a projection that
        keeps a large token view small).
    pretrained : bool
        Read the published weights from the local cache (``weights_dir``, as the
        ``weights`` rule filled it; never downloaded) instead of seeded random ones.
    vector_token : bool
        With ``tokens``: a layer with no token view (a vector, e.g. CLIP's ``embedding``)
        is returned as one token ``(n, 1, n_features)`` instead of raising.

    Returns
    -------
    ndarray of float32, shape (n, n_features), or (n, n_tokens, n_channels) with ``tokens``
    """
    import torch
    from PIL import Image

    net = get_network(network)
    loaded = net.builder(bool(pretrained), weights_dir, seed)
    kind = layer.rstrip("0123456789")
    rows = []
    with torch.inference_mode():
        for s in range(0, len(images), batch):
            items = [loaded.preprocess(Image.fromarray(im)) for im in images[s : s + batch]]
            out = loaded.forward(loaded.collate(items), [layer], "cpu")[layer]
            flat, tok = layer_views(out, loaded.readouts.get(kind, net.default_readout))
            if tokens and tok is None and vector_token:
                tok = flat[:, None, :]
            if tokens and tok is None:
                raise BrainpipeInputError(
                    "synthetic config", "response_layer", f"{layer!r} has no token view"
                )
            arr = (tok if tokens else flat).float().numpy()
            rows.append(arr if transform is None else transform(arr))
    return np.concatenate(rows)


def is_network_label(features_cfg: Mapping[str, Any] | None, label: str) -> bool:
    """True if ``label`` names a configured network (else a hand-made feature model)."""
    return label in ((features_cfg or {}).get("networks") or {})


__all__ = [
    "batch_size_for",
    "build_network_store",
    "extract_layers",
    "is_network_label",
    "pick_device",
]
