"""Spatial feature maps (before spatial pooling) for readouts that attend over positions.

A map is registered on its feature model's entry in the one feature registry
(:func:`brainpipe.features.register_spatial_map`); it returns ``(n_stimuli, n_tokens,
n_channels)``: one token per grid position. The store ``features/spatial/{name}.zarr``
holds ``features(stimulus, token, channel)``, each channel z-scored with statistics of the
training stimuli only.

A configured network (``features.networks.<name>`` with ``tokens: [layer]``) is a spatial
feature model too: :func:`build_spatial_store_from_network` reads the first token layer of
its feature store (``<layer>_tokens``: transformer tokens or conv positions) and writes the
same spatial store, so an attention readout attends over, e.g., ViT tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from brainpipe.errors import BrainpipeInputError
from brainpipe.features import check_columns, get_spatial_map, register_spatial_map, table_source
from brainpipe.features.gabor import gabor_energy, load_grayscale_images
from brainpipe.features.pca import read_stimuli_and_splits
from brainpipe.storage import provenance_attrs, write_zarr


@register_spatial_map("gabor")
def gabor_spatial(stimuli: pd.DataFrame, stimuli_dir: Path, grid: int = 8) -> np.ndarray:
    """Gabor energy on a ``grid`` × ``grid`` map: tokens = positions, channels = filters.

    Returns
    -------
    features : ndarray of float32, shape (n_stimuli, grid * grid, n_frequencies * n_orientations)
        ``log(1 + energy)`` (3 × 4 = 12 channels, 64 tokens by default).
    """
    source = table_source(stimuli)
    check_columns(stimuli, ["image"], source)
    images = load_grayscale_images(
        [Path(stimuli_dir) / str(p) for p in stimuli["image"]], source=source
    )
    energy = np.log1p(gabor_energy(images, grid=grid))  # (n, F, O, g, g)
    n, f, o = energy.shape[:3]
    return energy.reshape(n, f * o, grid * grid).transpose(0, 2, 1).astype(np.float32)


#: Bytes of one chunk of a spatial store (a few stimuli's maps; a DINOv2 map of 257 x 768
#: float32 is 0.8 MB, so one stimulus): a training job gathers a minibatch's images from
#: the store (:class:`brainpipe.models.data.ImageFeatures`) and reads little else
#: (uncompressed: see :func:`_write_spatial`).
SPATIAL_CHUNK_BYTES = 1 << 20


def spatial_chunk_rows(n_tokens: int, n_channels: int, n_stimuli: int) -> int:
    """Stimuli per chunk of a spatial store: :data:`SPATIAL_CHUNK_BYTES` of float32 maps."""
    return max(1, min(n_stimuli, SPATIAL_CHUNK_BYTES // (n_tokens * n_channels * 4)))


def _write_spatial(
    feats_raw: Any,
    stim: pd.DataFrame,
    out_path: Path,
    attrs: dict[str, Any],
    config: dict[str, Any] | None,
) -> Path:
    """Z-score each channel with the training stimuli's statistics and write the store.

    ``feats_raw`` is ``(n_stimuli, n_tokens, n_channels)``: a numpy array (normalised in
    place: no second copy) or a Dask array (a network's token layer read lazily: the
    statistics are one pass over its training rows, the store is written a chunk of stimuli
    at a time, so the job holds a few chunks, not the 7.9 GB of an NSD subject's DINOv2
    tokens). The store is chunked by stimulus rows (:func:`spatial_chunk_rows`).
    """
    import dask.array as da

    train = np.flatnonzero((stim["split"] == "train").to_numpy())
    n, t, c = (int(x) for x in feats_raw.shape)
    rows = spatial_chunk_rows(t, c, n)
    if isinstance(feats_raw, da.Array):
        import dask

        with dask.config.set(scheduler="synchronous"):  # one chunk at a time
            on_train = feats_raw[train].astype(np.float64)
            mean, sd = dask.compute(on_train.mean(axis=(0, 1)), on_train.std(axis=(0, 1)))
        mean, sd = mean.astype(np.float32), sd.astype(np.float32)
        feats = ((feats_raw.astype(np.float32) - mean) / np.where(sd > 0, sd, 1.0)).astype(
            np.float32
        )
        feats = feats.rechunk((rows, t, c))
    else:
        feats = np.asarray(feats_raw, dtype=np.float32)
        mean = feats[train].mean(axis=(0, 1))
        sd = feats[train].std(axis=(0, 1))
        feats -= mean
        feats /= np.where(sd > 0, sd, 1.0).astype(np.float32)
    ds = xr.Dataset(
        {"features": (("stimulus", "token", "channel"), feats)},
        coords={
            "stimulus": stim["stimulus"].to_numpy(dtype=object),
            "split": ("stimulus", stim["split"].to_numpy(dtype=object)),
            "token": np.arange(t),
            "channel": np.arange(c),
        },
        attrs={**attrs, "layout": "spatial", "fitted_on": "train", **provenance_attrs(config)},
    )
    # uncompressed: float32 activations barely compress (zstd kept 7.0 of 7.9 GB of the
    # scale benchmark's tokens) and decompressing took half of each per-batch read
    ds["features"].encoding.update(chunks=(rows, t, c), compressors=None)
    if isinstance(feats, np.ndarray):
        return write_zarr(ds, out_path)
    import dask

    with dask.config.set(scheduler="synchronous"):
        return write_zarr(ds, out_path)


def build_spatial_store_from_network(
    name: str,
    network_store: Path,
    stimuli_tsv: Path,
    splits_tsv: Path,
    out_path: Path,
    config: dict[str, Any] | None = None,
) -> Path:
    """The spatial store of a network's token layer (``tokens`` in its config entry).

    Parameters
    ----------
    name : str
        The feature label (``features.networks.<name>``).
    network_store : path
        Its ``features/{name}.zarr``, which holds ``<layer>_tokens(stimulus, token, channel)``.

    Raises
    ------
    BrainpipeInputError
        The network was configured without ``tokens``, or a stimulus has no tokens.
    """
    from brainpipe.features.networks import layer_variable
    from brainpipe.features.weights import network_settings
    from brainpipe.storage import open_zarr

    cfg = network_settings((config or {}).get("features"))[name]
    if not cfg.get("tokens"):
        raise BrainpipeInputError(
            "config",
            f"features.networks.{name}.tokens",
            "an attention readout over this network needs a token layer, e.g. [encoder.ln]",
        )
    layer = cfg["tokens"][0]
    store = open_zarr(network_store)
    var = layer_variable(layer) + "_tokens"
    stim = read_stimuli_and_splits(Path(stimuli_tsv), Path(splits_tsv), ("image",))
    known = pd.Index(store["stimulus"].values.astype(str))
    idx = known.get_indexer(stim["stimulus"].astype(str))
    if (idx < 0).any():
        raise BrainpipeInputError(
            str(network_store), "stimulus", f"no tokens for {stim['stimulus'][idx < 0].iloc[0]!r}"
        )
    raw = store[var].data  # lazy (Dask): read a chunk of stimuli at a time
    if not np.array_equal(idx, np.arange(raw.shape[0])):
        raw = raw[idx]
    return _write_spatial(
        raw, stim, Path(out_path), {"feature_model": name, "network_layer": layer}, config
    )


def build_spatial_feature_store(
    name: str,
    stimuli_tsv: Path,
    splits_tsv: Path,
    out_path: Path,
    config: dict[str, Any] | None = None,
) -> Path:
    """Extract a spatial feature map, z-score channels on training stimuli, write the store."""
    spatial_map = get_spatial_map(name)
    stim = read_stimuli_and_splits(Path(stimuli_tsv), Path(splits_tsv), ("image",))
    raw = spatial_map(stim, Path(stimuli_tsv).parent)
    return _write_spatial(raw, stim, Path(out_path), {"feature_model": name}, config)
