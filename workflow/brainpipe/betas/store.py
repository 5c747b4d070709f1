"""The betas.zarr contract, written once: every producer of betas builds its store here.

``betas.zarr`` (docs/architecture.md, "Storage contract") holds ``betas(trial, voxel)``
float32, trial coords ``stimulus, session, run, onset``, voxel coords (``i, j, k, x, y,
z`` for volumes; ``hemi, vertex`` for surfaces), boolean ``roi_<name>(voxel)`` coords,
per-voxel ``r2``, ``hrf_index``, ``ncsnr``, ``nc_1trial``, ``nc_3trial`` and attrs
``subject, space, tr, units, method, stage`` plus provenance. LSA
(:mod:`brainpipe.betas.lsa`), GLMsingle (:mod:`brainpipe.betas.glmsingle`) and NSD
ingest (volume and surface) describe their store with a :class:`BetasLayout` and
let it create the store; they then fill ``betas`` chunk by chunk and, where the
per-voxel variables are estimated after the betas, set them with
:func:`write_per_voxel`. :func:`close_store` consolidates the metadata.

The store is built with zarr directly: building an ``xarray.Dataset`` template imports
Dask (seconds on a busy machine) and gains nothing for a store whose big array is filled
chunk by chunk. The result is what ``Dataset.to_zarr`` writes: Zarr v3 arrays with
``dimension_names``, variable-length strings, NaN fill values (``_FillValue``) for
floats, and a ``coordinates`` attribute on each data variable naming its coordinates;
``xr.open_zarr`` reads it back as the same Dataset.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from brainpipe.bids import BidsLayout
from brainpipe.errors import BrainpipeInputError
from brainpipe.metrics import ncsnr_from_repeats, noise_ceiling
from brainpipe.storage import quiet_consolidated

#: Trial coordinates every betas.zarr has.
TRIAL_COORDS = ("stimulus", "session", "run", "onset")
#: Per-voxel variables every betas.zarr has, with their dtypes.
PER_VOXEL = {
    "r2": np.float32,
    "hrf_index": np.int16,
    "ncsnr": np.float32,
    "nc_1trial": np.float32,
    "nc_3trial": np.float32,
}
#: Attributes every betas.zarr has (plus :func:`brainpipe.storage.provenance_attrs`).
ATTRS = ("subject", "space", "tr", "units", "method", "stage")

Dims = str | tuple[str, ...]


def noise_ceiling_vars(ncsnr: np.ndarray) -> dict[str, tuple[str, np.ndarray]]:
    """``ncsnr``, ``nc_1trial`` and ``nc_3trial`` (% variance) as per-voxel variables.

    Parameters
    ----------
    ncsnr : numpy.ndarray, shape (n_voxels,)
        Noise-ceiling SNR per voxel; NaN (not estimated) stays NaN in the ceilings.
    """
    ncsnr = np.asarray(ncsnr, dtype=np.float32)
    out = {"ncsnr": ("voxel", ncsnr)}
    for n in (1, 3):
        nc = noise_ceiling(np.nan_to_num(ncsnr, nan=0.0), n).astype(np.float32)
        nc[np.isnan(ncsnr)] = np.nan
        out[f"nc_{n}trial"] = ("voxel", nc)
    return out


def placeholder_vars(n_voxels: int, extra: Mapping[str, Any] = {}) -> dict[str, tuple]:
    """Per-voxel variables of the contract (plus ``extra``: name -> dtype), all zero.

    For producers that estimate them after the betas (:func:`write_per_voxel`).
    """
    dtypes = {**PER_VOXEL, **extra}
    return {name: ("voxel", np.zeros(n_voxels, dtype=dt)) for name, dt in dtypes.items()}


def roi_membership(
    layout: BidsLayout, subject: str, rois: list[str], ijk: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Boolean ROI membership per voxel, one array per ROI.

    ``ijk`` (n_voxels, 3): the volume indices of the voxels (the ``i, j, k`` coords of
    ``preproc.zarr``, which leave out dropped dead voxels); without it every voxel of
    the brain mask, in C order.
    """
    if ijk is None:
        ijk = np.argwhere(np.asarray(nib.load(layout.brain_mask(subject)).dataobj) > 0)
    ijk = np.asarray(ijk, dtype=int)
    members = {}
    for roi in rois:
        volume = np.asarray(nib.load(layout.roi_mask(subject, roi)).dataobj) > 0
        members[roi] = volume[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    return members


def voxel_ijk(preproc: Any) -> np.ndarray:
    """Volume indices (n_voxels, 3) of the voxels of a preproc or betas store."""
    return np.stack([preproc[c].values for c in ("i", "j", "k")], axis=1)


def censored_scans(preproc: Any) -> np.ndarray:
    """Volumes of a ``preproc.zarr`` left out of every fit, shape (time,).

    Those the input policy censored (``censored(time)``, non-finite samples) and those
    scrubbing removed (``sample_mask(time)`` False); all False for older stores.
    """
    censored = np.zeros(preproc.sizes["time"], dtype=bool)
    if "censored" in preproc.variables:
        censored |= np.asarray(preproc["censored"].values, dtype=bool)
    if "sample_mask" in preproc.variables:
        censored |= ~np.asarray(preproc["sample_mask"].values, dtype=bool)
    return censored


def zscore_by_session(betas: np.ndarray, sessions: np.ndarray) -> np.ndarray:
    """Z-score each voxel's betas within each session (constant voxels become 0)."""
    out = np.empty_like(betas, dtype=np.float32)
    for ses in np.unique(sessions):
        sel = sessions == ses
        block = betas[sel]
        sd = block.std(axis=0)
        sd[sd == 0] = 1.0
        out[sel] = (block - block.mean(axis=0)) / sd
    return out


def ncsnr_of_store(
    betas: Any, sessions: np.ndarray, stimuli: np.ndarray, voxel_chunk: int
) -> np.ndarray:
    """Noise-ceiling SNR per voxel from the repeats of a filled ``betas`` array.

    Reads ``voxel_chunk`` voxels (all trials) at a time, z-scores them within each
    session (:func:`zscore_by_session`) and applies
    :func:`brainpipe.metrics.ncsnr_from_repeats`.

    Parameters
    ----------
    betas : zarr.Array or array-like, shape (n_trials, n_voxels)
    sessions, stimuli : numpy.ndarray, shape (n_trials,)
    voxel_chunk : int
        Voxels per read.

    Returns
    -------
    numpy.ndarray, shape (n_voxels,), float32
    """
    n_voxels = betas.shape[1]
    ncsnr = np.zeros(n_voxels, dtype=np.float32)
    for v0 in range(0, n_voxels, voxel_chunk):
        vs = slice(v0, min(v0 + voxel_chunk, n_voxels))
        block = np.asarray(betas[:, vs])
        ncsnr[vs] = ncsnr_from_repeats(zscore_by_session(block, sessions), stimuli)
    return ncsnr


@dataclass
class BetasLayout:
    """Everything of a betas.zarr but the betas; :meth:`write` creates the store.

    Parameters
    ----------
    data_vars : dict
        Per-voxel variables, ``name -> ("voxel", values)``; at least :data:`PER_VOXEL`.
    coords : dict
        ``name -> (dim, values)`` for the trial coords (at least :data:`TRIAL_COORDS`)
        and the voxel coords (positions and ``roi_<name>`` membership).
    attrs : dict
        At least :data:`ATTRS`.
    filters : sequence, optional
        Zarr filters of ``betas`` (NSD: int16 × 300, exact).
    compressors : sequence
        Zarr compressors of ``betas`` (empty: none; default: zarr's default).
    """

    data_vars: dict[str, tuple[Dims, Any]]
    coords: dict[str, tuple[Dims, Any]]
    attrs: dict[str, Any]
    filters: Sequence[Any] | None = None
    compressors: Sequence[Any] | str | None = "auto"
    _pending: list = field(default_factory=list, init=False, repr=False)
    _pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)

    def check(self, n_trials: int, n_voxels: int) -> None:
        """Raise :class:`BrainpipeInputError` where the layout breaks the contract."""
        missing = [c for c in TRIAL_COORDS if c not in self.coords]
        missing += [v for v in PER_VOXEL if v not in self.data_vars]
        missing += [a for a in ATTRS if a not in self.attrs]
        if missing:
            raise BrainpipeInputError("betas.zarr", ", ".join(missing), "missing from the layout")
        sizes = {"trial": n_trials, "voxel": n_voxels}
        # further dimensions (NSD's ``ses`` of ``valid(ses, voxel)``) take their size
        # from their dimension coordinate
        for name, (dims, values) in self.coords.items():
            if _dims(dims) == (name,) and name not in sizes:
                sizes[name] = len(values)
        for name, (dims, values) in {**self.coords, **self.data_vars}.items():
            want = tuple(sizes.get(d, -1) for d in _dims(dims))
            if np.shape(values) != want:
                raise BrainpipeInputError(
                    "betas.zarr", name, f"shape {np.shape(values)}, expected {want} ({dims})"
                )

    def write(
        self,
        path: str | Path,
        betas_shape: tuple[int, int],
        chunks: tuple[int, int],
        *,
        direct: bool = False,
    ) -> Any:
        """Create the store with every variable, plus an empty ``betas``; return ``betas``.

        The small arrays are written on background threads; call :meth:`finish` (or
        :func:`close_store`) before the store is read.

        Parameters
        ----------
        path : path
            The store (a temporary path: see :func:`brainpipe.storage.atomic_path`).
        betas_shape : (int, int)
            ``(n_trials, n_voxels)``.
        chunks : (int, int)
            Chunks of ``betas``: trials of one session, a block of voxels. The per-voxel
            variables are chunked like ``betas``' voxels (in one shard).
        direct : bool
            Write ``betas``' chunks around the page cache (written once, read by later
            jobs: :class:`brainpipe.directio.DirectWriteStore`).

        Returns
        -------
        zarr.Array
            ``betas``, every chunk to be written by the caller.
        """
        import zarr

        n_trials, n_voxels = (int(n) for n in betas_shape)
        self.check(n_trials, n_voxels)
        chunks = (max(1, min(int(chunks[0]), n_trials)), max(1, min(int(chunks[1]), n_voxels)))
        if direct:
            from brainpipe.directio import DirectWriteStore

            store: Any = DirectWriteStore(path)
        else:
            store = str(path)
        group = zarr.open_group(store, mode="w", zarr_format=3, attributes=self.attrs)
        dims_of = {name: _dims(dims) for name, (dims, _) in self.coords.items()}

        def coordinates(dims: tuple[str, ...]) -> str:
            return " ".join(sorted(c for c, d in dims_of.items() if set(d) <= set(dims)))

        def write_one(name: str, dims: Dims, values: Any) -> None:
            values = np.asarray(values)
            attrs = {} if name in self.coords else {"coordinates": coordinates(_dims(dims))}
            kwargs: dict[str, Any] = {}
            if values.dtype.kind in "UOT":
                values = values.astype(str).astype(object)
                kwargs["dtype"] = str  # Zarr v3 variable-length UTF-8, as portable_strings
            elif values.dtype.kind == "f":
                kwargs["fill_value"] = np.nan
                attrs["_FillValue"] = _nan_fill_attr()
            if name in self.data_vars:
                # chunks aligned with betas' voxel chunks, all in one shard: one file, not
                # one per chunk (file creation dominates writing these small arrays)
                lead = values.shape[:-1]  # (ses, voxel) variables: whole sessions per chunk
                kwargs["chunks"] = (*lead, chunks[1])
                kwargs["shards"] = (*lead, -(-max(values.shape[-1], 1) // chunks[1]) * chunks[1])
            arr = group.create_array(
                name,
                shape=values.shape,
                dtype=kwargs.pop("dtype", values.dtype),
                dimension_names=_dims(dims),
                attributes=attrs,
                **kwargs,
            )
            arr[...] = values

        with quiet_consolidated():
            betas = group.create_array(
                "betas",
                shape=(n_trials, n_voxels),
                chunks=chunks,
                dtype=np.float32,
                compressors=None if not self.compressors else self.compressors,
                filters=list(self.filters) if self.filters else None,
                fill_value=np.nan,
                config={"write_empty_chunks": True},  # every chunk is written: no NaN scan
                dimension_names=("trial", "voxel"),
                attributes={
                    "coordinates": coordinates(("trial", "voxel")),
                    "_FillValue": _nan_fill_attr(),
                },
            )
        # The small arrays (file creation is their cost) are written in the background,
        # while the producer starts on the betas; finish() waits for them.
        self._pool = ThreadPoolExecutor(max_workers=2)
        self._pending = [
            self._pool.submit(write_one, name, dims, values)
            for name, (dims, values) in {**self.coords, **self.data_vars}.items()
        ]
        return betas

    def finish(self) -> None:
        """Wait for the arrays :meth:`write` left writing; raise the first error."""
        pool, pending = self._pool, self._pending
        self._pool, self._pending = None, []
        if pool is None:
            return
        try:
            for fut in pending:
                fut.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def layout_from_preproc(
    preproc: Any,
    bids: BidsLayout,
    subject: str,
    trials: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any],
    extra_vars: Mapping[str, Any] = {},
    config: Mapping[str, Any] | None = None,
) -> BetasLayout:
    """The layout of betas estimated from ``preproc.zarr`` (LSA, GLMsingle).

    Voxel coords ``i, j, k, x, y, z`` and the ``subject, affine, volume_shape, space, tr``
    attrs come from ``preproc`` (on a surface: ``hemi, vertex`` and ``surface,
    n_vertices`` instead, ROIs from the per-vertex masks of the data view);
    ``roi_<name>`` from every ROI mask ``bids`` has for the subject (adding an ROI to the
    config then needs no new betas); the per-voxel variables start at zero
    (:func:`placeholder_vars`, set later with :func:`write_per_voxel`).

    Parameters
    ----------
    preproc : xarray.Dataset
        The subject's ``preproc.zarr``.
    trials : mapping
        Trial coords, ``stimulus, session, run, onset`` (one value per trial).
    attrs : mapping
        The estimator's attrs (``method`` and its own).
    extra_vars : mapping
        Further per-voxel variables, name -> dtype.
    config : mapping, optional
        Config whose hash goes into the provenance attrs.
    """
    from brainpipe.storage import provenance_attrs

    if "hemi" in preproc.coords:  # a surface (fMRIPrep fsaverage runs, brainpipe.surface)
        from brainpipe.surface import surface_roi_membership

        roi = surface_roi_membership(
            bids, subject, bids.available_rois(subject), preproc["hemi"].values,
            preproc["vertex"].values,
        )  # fmt: skip
        where, geometry = ("hemi", "vertex"), ("surface", "n_vertices")
    else:
        roi = roi_membership(bids, subject, bids.available_rois(subject), voxel_ijk(preproc))
        where, geometry = ("i", "j", "k", "x", "y", "z"), ("affine", "volume_shape")
    return BetasLayout(
        data_vars=placeholder_vars(preproc.sizes["voxel"], extra_vars),
        coords={
            **{name: ("trial", np.asarray(values)) for name, values in trials.items()},
            **{c: ("voxel", preproc[c].values) for c in where},
            **{f"roi_{name}": ("voxel", member) for name, member in roi.items()},
        },
        attrs={
            **{k: preproc.attrs[k] for k in ("subject", *geometry, "space", "tr")},
            "units": "percent signal change",
            "stage": "betas",
            **attrs,
            **provenance_attrs(config),
        },
    )


def write_per_voxel(path: str | Path, values: Mapping[str, np.ndarray]) -> None:
    """Set per-voxel variables of a store made by :meth:`BetasLayout.write`.

    Each value is cast to the dtype the store holds for it.
    """
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    for name, data in values.items():
        arr = group[name]
        arr[:] = np.asarray(data).astype(arr.dtype)


def close_store(path: str | Path, layout: BetasLayout | None = None) -> None:
    """Wait for ``layout``'s background writes, then consolidate the store's metadata."""
    import zarr

    if layout is not None:
        layout.finish()
    with quiet_consolidated():
        zarr.consolidate_metadata(str(path), zarr_format=3)


def _dims(dims: Dims) -> tuple[str, ...]:
    return (dims,) if isinstance(dims, str) else tuple(dims)


def _nan_fill_attr() -> str:
    """xarray's ``_FillValue`` attribute for NaN (base64 of the float64 bytes)."""
    return base64.standard_b64encode(np.float64(np.nan).tobytes()).decode()
