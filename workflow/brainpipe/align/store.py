"""Fit one alignment method on all subjects' betas and write ``align/{method}.zarr``.

Store layout (``S`` = subject label such as ``01``; all float data float32 unless noted)
-----------------------------------------------------------------------------------
``responses(subject, trial, component)``
    Shared-space responses of every trial of every subject (train and test). Subjects
    may have different trial counts: ``trial`` runs to the largest count and shorter
    subjects are padded with NaN (``valid(subject, trial)`` is False there). Trial
    coords are 2-D, copied from each subject's betas: ``stimulus``, ``session``,
    ``run`` (str, "" on padding), ``onset`` (float, NaN on padding), and ``split``
    ("train"/"test"/"").
``template(fit_stimulus, component)``
    The template / shared response on the fitting stimuli.
``transform_sub-S(voxel_sub-S, component)``
    Functional methods: dense map of standardised betas into the shared space,
    ``responses = ((betas - mean_sub-S) / scale_sub-S) @ transform_sub-S``.
    Piecewise methods: the same, block-sparse (zero outside a voxel's parcel).
    Anatomical: too big to store dense, so stored as COO triplets
    ``transform_row_sub-S``, ``transform_col_sub-S``, ``transform_weight_sub-S``
    (dimension ``nnz_sub-S``; row = voxel position, col = component position); on a
    surface these are a selection (weight 1, one voxel per component).
``mean_sub-S(voxel_sub-S)``, ``scale_sub-S(voxel_sub-S)`` (float64)
    Per-voxel standardisation, from the fitting data only.
``voxel_sub-S``
    Dimension coordinate: the index of each used voxel in the subject's ``betas.zarr``
    ``voxel`` dimension (the ROI selection in attrs ``roi``).
Components: ``component`` labels; piecewise stores ``component_parcel``; anatomical
stores template voxel indices ``component_i/j/k``, centres ``component_x/y/z`` (mm) and
attrs ``template_affine`` on a volume, ``component_hemi`` / ``component_vertex`` (the
surface vertices present in every subject, ``lh`` then ``rh``, by vertex) and attrs
``surface`` on a surface.
Attrs: ``method``, ``subjects``, ``fit_stimuli`` (list of stimulus ids the transforms
were fitted on: shared stimuli of the training split, averaged over repeats),
``params`` (JSON of the method's parameters), ``roi``, ``betas_space`` (the betas'
``space`` attr) and ``betas_geometry`` (``volume`` or ``surface``), method
diagnostics, provenance.

Input spaces. Volume betas carry ``i, j, k`` voxel coords and an ``affine``; surface
betas (e.g. :mod:`brainpipe.datasets.nsd_surface`, ``space = "nsd-fsaverage"``) carry
``hemi`` and ``vertex`` coords, attrs ``surface`` and ``n_vertices``, and no affine.
Functional methods need neither; anatomical alignment and piecewise parcels use them
(:func:`betas_space`, :func:`voxel_geometry`). All subjects must be in one space:
a surface store mixed with a volume store, or two different surfaces, is refused
naming the file and the field.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from brainpipe.align._sklearn_api import (
    AnatomicalAlignment,
    LinearAlignment,
    PiecewiseAlignment,
    ProcrustesAlignment,
    RidgeAlignment,
    SRMAlignment,
    SurfaceAnatomicalAlignment,
)
from brainpipe.align.parcels import (
    HEMI_FIELD,
    atlas_parcels,
    cluster_parcels,
    surface_atlas_parcels,
)
from brainpipe.errors import BrainpipeInputError
from brainpipe.splits import read_splits
from brainpipe.storage import open_zarr, provenance_attrs, write_zarr

log = logging.getLogger(__name__)

#: Method names accepted in ``align.methods``.
METHODS = (
    "anatomical",
    "procrustes",
    "srm",
    "ridge",
    "piecewise_procrustes",
    "piecewise_srm",
    "piecewise_ridge",
)

#: Defaults of the ``align:`` config block (besides ``methods``).
DEFAULTS: dict[str, Any] = {
    "n_components": 10,
    "roi": "all",
    "n_iter": 2,
    "srm_n_iter": 20,
    "ridge_alphas": [0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0],
    "ridge_target": "template",
    "n_parcels": 8,
    "atlas": None,
    "template_resolution_mm": None,
    "backend": "numpy",
    "seed": 0,
}


def method_params(method: str, align_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The parameters one method uses, from the ``align:`` config block plus defaults.

    Raises
    ------
    BrainpipeInputError
        For an unknown method.
    """
    if method not in METHODS:
        raise BrainpipeInputError(
            "config", "align.methods", f"got {method!r}; expected one of {', '.join(METHODS)}"
        )
    cfg = {**DEFAULTS, **{k: v for k, v in (align_cfg or {}).items() if k != "methods"}}
    keep = ["roi"]
    base = method.removeprefix("piecewise_")
    if base != "anatomical":
        keep += ["n_components", "backend"]
    if base == "procrustes":
        keep += ["n_iter"]
    if base in ("srm", "ridge"):
        keep += ["srm_n_iter", "seed"]
    if base == "ridge":
        keep += ["ridge_alphas", "ridge_target"]
    if method.startswith("piecewise_"):
        keep += ["n_parcels", "atlas", "seed"]
    if base == "anatomical":
        keep += ["template_resolution_mm"]
    return {k: cfg[k] for k in keep}


def build_estimator(
    method: str,
    params: Mapping[str, Any],
    subjects: Sequence[str],
    geometry: Sequence[Mapping[str, Any]],
) -> LinearAlignment:
    """The estimator for ``method``.

    Parameters
    ----------
    method : str
        One of :data:`METHODS`.
    params : mapping
        From :func:`method_params`.
    subjects : sequence of str
        Subject labels, in fitting order (for ``ridge_target``).
    geometry : sequence of mapping
        Per subject, from :func:`voxel_geometry`: ``kind`` ``"volume"`` (the default
        when absent) with ``ijk`` (n_voxels, 3) int, ``affine`` (4, 4), ``xyz``
        (n_voxels, 3) mm; or ``kind`` ``"surface"`` with ``hemi`` (n_voxels,) str,
        ``vertex`` (n_voxels,) int and optionally ``n_vertices`` (hemi -> count).
        Optional ``source`` and ``space`` name the betas in error messages.

    Raises
    ------
    BrainpipeInputError
        Subjects in different spaces (``space``), a piecewise method on a surface
        without ``align.atlas``, or an atlas that does not fit the betas.
    """
    for g in geometry[1:]:
        check_same_space(geometry[0], g)
    surface = _kind(geometry[0]) == "surface"
    if method == "anatomical" and surface:
        return SurfaceAnatomicalAlignment(
            [g["hemi"] for g in geometry], [g["vertex"] for g in geometry]
        )
    if method == "anatomical":
        return AnatomicalAlignment(
            [g["ijk"] for g in geometry],
            [g["affine"] for g in geometry],
            params.get("template_resolution_mm"),
        )
    base = method.removeprefix("piecewise_")

    def make(k: int) -> LinearAlignment:
        if base == "procrustes":
            return ProcrustesAlignment(k, n_iter=params["n_iter"], backend=params["backend"])
        if base == "srm":
            return SRMAlignment(
                k, n_iter=params["srm_n_iter"], seed=params["seed"], backend=params["backend"]
            )
        target = params["ridge_target"]
        if target != "template":
            if str(target) not in subjects:
                raise BrainpipeInputError(
                    "config",
                    "align.ridge_target",
                    f"got {target!r}; expected 'template' or one of {', '.join(subjects)}",
                )
            target = list(subjects).index(str(target))
        return RidgeAlignment(
            k,
            alphas=params["ridge_alphas"],
            target=target,
            n_iter=params["srm_n_iter"],
            seed=params["seed"],
            backend=params["backend"],
        )

    if not method.startswith("piecewise_"):
        return make(int(params["n_components"]))
    return PiecewiseAlignment(
        make, piecewise_parcels(params, geometry), int(params["n_components"])
    )


def piecewise_parcels(
    params: Mapping[str, Any], geometry: Sequence[Mapping[str, Any]]
) -> list[np.ndarray]:
    """Parcel label of every voxel of every subject, for piecewise methods.

    Volume: ``align.atlas`` (a NIfTI label image) or k-means of the voxels' mm
    coordinates (``align.n_parcels``). Surface: ``align.atlas`` with ``{hemi}`` in the
    path (one label file per hemisphere on the betas' surface); there are no mm
    coordinates to cluster, so without an atlas this is an error.

    Parameters
    ----------
    params : mapping
        ``atlas``, ``n_parcels``, ``seed`` (from :func:`method_params`).
    geometry : sequence of mapping
        As for :func:`build_estimator`.

    Returns
    -------
    list of ndarray of int64, shape (n_voxels_s,)
        Parcel of each voxel, -1 for none.
    """
    atlas = params.get("atlas")
    first = geometry[0]
    if _kind(first) == "surface":
        if not atlas:
            raise BrainpipeInputError(
                first.get("source", "<betas>"),
                "space",
                f"{first.get('space', '')!r} is a surface space: its voxels (hemi, vertex)"
                " have no x/y/z mm coordinates, so k-means parcels (align.n_parcels) cannot"
                " be made; piecewise methods on a surface need align.atlas: one label file"
                f" per hemisphere on the same surface, with {HEMI_FIELD} in the path (e.g."
                f" NSD's nsddata/freesurfer/fsaverage/label/{HEMI_FIELD}.HCP_MMP1.mgz)",
            )
        return surface_atlas_parcels(
            atlas,
            [g["hemi"] for g in geometry],
            [g["vertex"] for g in geometry],
            first.get("n_vertices"),
        )
    xyz = [g["xyz"] for g in geometry]
    if atlas and HEMI_FIELD in str(atlas):
        raise BrainpipeInputError(
            atlas,
            "align.atlas",
            f"a per-hemisphere surface parcellation ({HEMI_FIELD} in the path) cannot label"
            f" volume betas ({first.get('source', '<betas>')}: i/j/k voxels); give a NIfTI"
            " label image in the betas' mm space",
        )
    if atlas:
        return atlas_parcels(atlas, xyz)
    return cluster_parcels(xyz, int(params["n_parcels"]), seed=int(params["seed"]))


def _kind(geometry: Mapping[str, Any]) -> str:
    return str(geometry.get("kind", "volume"))


def _describe(space: Mapping[str, Any]) -> str:
    if _kind(space) == "surface":
        return f"a surface store (hemi/vertex coords on {space.get('surface')!r}, no affine)"
    return "a volume store (i/j/k coords and an affine)"


def betas_space(ds: xr.Dataset, source: str) -> dict[str, Any]:
    """Which kind of space a betas store is in, checked for what alignment needs.

    Parameters
    ----------
    ds : xarray.Dataset
        An opened ``betas.zarr``.
    source : str
        Its path (for error messages).

    Returns
    -------
    dict
        ``kind`` (``"surface"`` when the store has ``hemi``/``vertex`` coords or a
        ``surface`` attr, else ``"volume"``), ``space`` (attr, "" if absent),
        ``source``; for a surface also ``surface`` (attr ``surface``, else ``space``)
        and ``n_vertices`` (attr, hemi -> count, or None).

    Raises
    ------
    BrainpipeInputError
        A surface store without ``hemi`` or ``vertex``; a volume store without
        ``i``, ``j``, ``k`` or ``affine``.
    """
    space = str(ds.attrs.get("space", ""))
    if "hemi" in ds.coords or "vertex" in ds.coords or "surface" in ds.attrs:
        for field in ("hemi", "vertex"):
            if field not in ds.coords:
                raise BrainpipeInputError(
                    source,
                    field,
                    "voxel coordinate is missing (a surface store has both hemi and vertex)",
                )
        n_vertices = ds.attrs.get("n_vertices")
        return {
            "kind": "surface",
            "space": space,
            "surface": str(ds.attrs.get("surface") or space),
            "n_vertices": {str(h): int(n) for h, n in n_vertices.items()}
            if isinstance(n_vertices, Mapping)
            else None,
            "source": source,
        }
    for field in ("i", "j", "k"):
        if field not in ds.coords:
            raise BrainpipeInputError(source, field, "voxel coordinate is missing")
    if "affine" not in ds.attrs:
        raise BrainpipeInputError(source, "affine", "attribute is missing")
    return {"kind": "volume", "space": space, "source": source}


def check_same_space(ref: Mapping[str, Any], other: Mapping[str, Any]) -> None:
    """Refuse to align ``other`` with ``ref`` unless both are in one kind of space.

    Volume stores are compared no further (anatomical alignment maps each through its
    own affine); surface stores must be on the same surface with the same vertex counts.

    Raises
    ------
    BrainpipeInputError
        Naming ``other``'s file and the field (``space``, ``surface``, ``n_vertices``).
    """
    src = other.get("source", "<betas>")
    ref_src = ref.get("source", "<betas>")
    if _kind(ref) != _kind(other):
        raise BrainpipeInputError(
            src,
            "space",
            f"{other.get('space', '')!r} is {_describe(other)}, but {ref_src} is"
            f" {ref.get('space', '')!r}, {_describe(ref)}; alignment needs every subject in"
            " one space (make all subjects' betas with the same source.space)",
        )
    if _kind(ref) != "surface":
        return
    if ref.get("surface") != other.get("surface"):
        raise BrainpipeInputError(
            src,
            "surface",
            f"is on {other.get('surface')!r}, but {ref_src} on {ref.get('surface')!r};"
            " vertex indices of different surfaces do not correspond",
        )
    a, b = ref.get("n_vertices"), other.get("n_vertices")
    if a is not None and b is not None and dict(a) != dict(b):
        raise BrainpipeInputError(
            src, "n_vertices", f"is {dict(b)}, but {ref_src} has {dict(a)} on the same surface"
        )


def voxel_geometry(ds: xr.Dataset, space: Mapping[str, Any], voxels: np.ndarray) -> dict[str, Any]:
    """Where the selected ``voxels`` of a betas store are, for :func:`build_estimator`.

    Parameters
    ----------
    ds : xarray.Dataset
        An opened ``betas.zarr``.
    space : mapping
        Its :func:`betas_space`.
    voxels : ndarray of int, shape (n_used,)
        Positions along ``voxel`` (the ROI selection).

    Returns
    -------
    dict
        ``space`` plus, volume: ``ijk``, ``affine``, ``xyz``; surface: ``hemi``,
        ``vertex``.

    Raises
    ------
    BrainpipeInputError
        A surface store that lists one ``(hemi, vertex)`` twice (field ``vertex``).
    """
    out = dict(space)
    if _kind(space) == "surface":
        hemi = np.asarray(ds["hemi"].values).astype(str)[voxels]
        vertex = np.asarray(ds["vertex"].values).astype(np.int64)[voxels]
        if pd.MultiIndex.from_arrays([hemi, vertex]).has_duplicates or (vertex < 0).any():
            raise BrainpipeInputError(
                space.get("source", "<betas>"),
                "vertex",
                "expected unique, non-negative (hemi, vertex) pairs; some pair is repeated"
                " or negative",
            )
        out.update(hemi=hemi, vertex=vertex)
        return out
    ijk = np.stack([np.asarray(ds[c].values)[voxels] for c in ("i", "j", "k")], axis=1)
    affine = np.asarray(ds.attrs["affine"], dtype=np.float64)
    out.update(ijk=ijk, affine=affine, xyz=ijk @ affine[:3, :3].T + affine[:3, 3])
    return out


def select_voxels(betas: xr.Dataset, roi: str | Sequence[str], source: str) -> np.ndarray:
    """Indices of the voxels in ``roi`` ("all", one ROI name or a list: their union)."""
    if isinstance(roi, str) and roi == "all":
        return np.arange(betas.sizes["voxel"])
    names = [roi] if isinstance(roi, str) else list(roi)
    keep = np.zeros(betas.sizes["voxel"], dtype=bool)
    for name in names:
        coord = f"roi_{name}"
        if coord not in betas.coords:
            have = sorted(c.removeprefix("roi_") for c in betas.coords if c.startswith("roi_"))
            raise BrainpipeInputError(
                source, coord, f"ROI {name!r} not in betas; available: {', '.join(have)}"
            )
        keep |= np.asarray(betas[coord].values, dtype=bool)
    if not keep.any():
        raise BrainpipeInputError(source, "roi", f"ROI selection {roi!r} has no voxels")
    return np.flatnonzero(keep)


def fit_stimuli(trial_stimuli: Sequence[np.ndarray], splits: pd.Series) -> list[str]:
    """Training-split stimuli seen by every subject, sorted: what alignment is fitted on."""
    common = set(map(str, trial_stimuli[0]))
    for stims in trial_stimuli[1:]:
        common &= set(map(str, stims))
    train = set(splits.index[splits == "train"].astype(str))
    return sorted(common & train)


def average_repeats(
    betas: np.ndarray, trial_stimuli: np.ndarray, stimuli: Sequence[str]
) -> np.ndarray:
    """Mean over repeats of each of ``stimuli`` (in that order).

    Parameters
    ----------
    betas : ndarray, shape (n_trials, n_voxels)
    trial_stimuli : ndarray of str, shape (n_trials,)
    stimuli : sequence of str, length n_stimuli

    Returns
    -------
    ndarray of float64, shape (n_stimuli, n_voxels)
    """
    pos = {s: i for i, s in enumerate(stimuli)}
    rows = np.asarray([pos.get(str(s), -1) for s in trial_stimuli])
    used = rows >= 0
    out = np.zeros((len(stimuli), betas.shape[1]))
    np.add.at(out, rows[used], np.asarray(betas[used], dtype=np.float64))
    counts = np.bincount(rows[used], minlength=len(stimuli))
    return out / counts[:, None]


def fit_alignment_store(
    betas_paths: Mapping[str, str | Path],
    splits_tsv: str | Path,
    out: str | Path,
    method: str,
    params: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Fit ``method`` on the shared training stimuli and write ``align/{method}.zarr``.

    Parameters
    ----------
    betas_paths : mapping subject label -> path of ``betas.zarr``
    splits_tsv : path of ``splits.tsv``
    out : path of the store to write (atomically)
    method : str
        One of :data:`METHODS`.
    params : mapping
        From :func:`method_params`.
    config : mapping, optional
        The workflow config (its hash goes into the attrs).

    Returns
    -------
    xarray.Dataset
        What was written (see the module docstring for the layout).
    """
    subjects = [str(s) for s in betas_paths]
    splits = read_splits(splits_tsv)
    stores = {s: open_zarr(betas_paths[s]) for s in subjects}
    spaces = [betas_space(stores[s], str(betas_paths[s])) for s in subjects]
    for space in spaces[1:]:
        check_same_space(spaces[0], space)
    voxels, geometry, stimuli = {}, [], []
    for s, space in zip(subjects, spaces, strict=True):
        ds, src = stores[s], str(betas_paths[s])
        voxels[s] = select_voxels(ds, params["roi"], src)
        geometry.append(voxel_geometry(ds, space, voxels[s]))
        stimuli.append(np.asarray(ds["stimulus"].values).astype(str))
    fit_ids = fit_stimuli(stimuli, splits)
    if len(fit_ids) < 2:
        raise BrainpipeInputError(
            splits_tsv,
            "split",
            f"only {len(fit_ids)} training stimuli are seen by every subject; alignment needs"
            " shared training stimuli (set splits.shared_train_fraction > 0)",
        )
    log.info(
        "%s: fitting on %d shared training stimuli, %d subjects",
        method,
        len(fit_ids),
        len(subjects),
    )
    params = dict(params)
    if "n_components" in params and not method.startswith("piecewise_"):
        limit = min(len(fit_ids), *(len(v) for v in voxels.values()))
        if params["n_components"] > limit:
            log.warning(
                "align.n_components=%d exceeds %d (fitting stimuli / smallest voxel count);"
                " using %d",
                params["n_components"],
                limit,
                limit,
            )
            params["n_components_requested"] = params["n_components"]
            params["n_components"] = limit
    # Built before any betas are read: parcel and atlas errors come at once.
    est = build_estimator(method, params, subjects, geometry)
    fit_set = set(fit_ids)
    Xs = []
    for s, stims in zip(subjects, stimuli, strict=True):
        rows = np.flatnonzero(np.isin(stims, list(fit_set)))
        data = stores[s]["betas"].isel(trial=rows, voxel=voxels[s]).values
        Xs.append(average_repeats(data, stims[rows], fit_ids))
    est.fit(Xs)
    del Xs

    n_trials = max(len(st) for st in stimuli)
    K = est.n_components_
    responses = np.full((len(subjects), n_trials, K), np.nan, dtype=np.float32)
    for si, s in enumerate(subjects):
        betas = stores[s]["betas"].isel(voxel=voxels[s]).data
        for start in range(0, betas.shape[0], max(1, betas.chunksize[0])):
            block = np.asarray(betas[start : start + betas.chunksize[0]].compute())
            responses[si, start : start + len(block)] = est.transform(block, si)
        log.info("sub-%s: %d trials mapped to %d components", s, betas.shape[0], K)

    ds = _assemble(
        est, method, params, subjects, stores, voxels, stimuli, splits, fit_ids, responses
    )
    ds.attrs["betas_space"] = spaces[0]["space"]
    ds.attrs["betas_geometry"] = spaces[0]["kind"]
    if spaces[0]["kind"] == "surface":
        ds.attrs["surface"] = spaces[0]["surface"]
    ds.attrs.update(provenance_attrs(config))
    write_zarr(ds, out)
    return ds


def _pad(values: list[np.ndarray], n: int, fill: Any, dtype: Any) -> np.ndarray:
    out = np.full((len(values), n), fill, dtype=dtype)
    for i, v in enumerate(values):
        out[i, : len(v)] = v
    return out


def _assemble(
    est: LinearAlignment,
    method: str,
    params: Mapping[str, Any],
    subjects: list[str],
    stores: Mapping[str, xr.Dataset],
    voxels: Mapping[str, np.ndarray],
    stimuli: list[np.ndarray],
    splits: pd.Series,
    fit_ids: list[str],
    responses: np.ndarray,
) -> xr.Dataset:
    n_trials = responses.shape[1]
    K = responses.shape[2]
    trial_coord = {}
    for name, fill, dtype in (
        ("session", "", object),
        ("run", "", object),
        ("onset", np.nan, float),
    ):
        vals = [np.asarray(stores[s][name].values) for s in subjects]
        if dtype is object:
            vals = [v.astype(str) for v in vals]
        trial_coord[name] = _pad(vals, n_trials, fill, dtype)
    split_vals = [np.asarray(splits.reindex(st).fillna("").values, dtype=str) for st in stimuli]
    coords: dict[str, Any] = {
        "subject": np.asarray(subjects, dtype=object),
        "stimulus": (("subject", "trial"), _pad(stimuli, n_trials, "", object)),
        "session": (("subject", "trial"), trial_coord["session"]),
        "run": (("subject", "trial"), trial_coord["run"]),
        "onset": (("subject", "trial"), trial_coord["onset"]),
        "split": (("subject", "trial"), _pad(split_vals, n_trials, "", object)),
        "valid": (
            ("subject", "trial"),
            _pad([np.ones(len(st), bool) for st in stimuli], n_trials, False, bool),
        ),
        "fit_stimulus": np.asarray(fit_ids, dtype=object),
    }
    data_vars: dict[str, Any] = {
        "responses": (("subject", "trial", "component"), responses, {"units": "standardised"}),
        "template": (("fit_stimulus", "component"), est.template_.astype(np.float32)),
    }
    attrs: dict[str, Any] = {
        "method": method,
        "subjects": subjects,
        "fit_stimuli": list(fit_ids),
        "n_fit_stimuli": len(fit_ids),
        "params": json.dumps(dict(params), sort_keys=True),
        "roi": params["roi"] if isinstance(params["roi"], str) else list(params["roi"]),
        "stage": "align",
    }
    if isinstance(est, AnatomicalAlignment):
        coords["component"] = np.asarray([f"v{i:06d}" for i in range(K)], dtype=object)
        for a, name in enumerate("ijk"):
            coords[f"component_{name}"] = ("component", est.template_ijk_[:, a].astype(np.int32))
        for a, name in enumerate("xyz"):
            coords[f"component_{name}"] = ("component", est.template_xyz_[:, a].astype(np.float32))
        attrs["template_affine"] = est.template_affine_.tolist()
        attrs["template_resolution_mm"] = est.resolution_mm_
        attrs["template"] = "MNI152 brain mask (nilearn), resampled"
    elif isinstance(est, SurfaceAnatomicalAlignment):
        coords["component"] = np.asarray(
            [f"{h}{v:06d}" for h, v in zip(est.template_hemi_, est.template_vertex_, strict=True)],
            dtype=object,
        )
        coords["component_hemi"] = ("component", est.template_hemi_.astype(object))
        coords["component_vertex"] = ("component", est.template_vertex_.astype(np.int32))
        attrs["template"] = "surface vertices present in every subject, matched by (hemi, vertex)"
    else:
        coords["component"] = np.asarray([f"c{i:04d}" for i in range(K)], dtype=object)
    if isinstance(est, PiecewiseAlignment):
        coords["component_parcel"] = ("component", est.component_parcel_)
        attrs["n_parcels"] = len(est.parcels_)
    if isinstance(est, ProcrustesAlignment):
        attrs["subject_scales"] = [float(a) for a in est.subject_scales_]
    if isinstance(est, SRMAlignment):
        attrs["objective"] = [float(o) for o in est.objective_]
    if isinstance(est, RidgeAlignment):
        attrs["ridge_alphas_chosen"] = [float(a) for a in est.alphas_]
    transforms = est.transforms_  # built once (piecewise and anatomical build them on request)
    for si, s in enumerate(subjects):
        vdim = f"voxel_sub-{s}"
        coords[vdim] = voxels[s].astype(np.int64)
        data_vars[f"mean_sub-{s}"] = (vdim, est.means_[si])
        data_vars[f"scale_sub-{s}"] = (vdim, est.scales_[si])
        if isinstance(est, (AnatomicalAlignment, SurfaceAnatomicalAlignment)):
            coo = transforms[si].tocoo()
            ndim = f"nnz_sub-{s}"
            data_vars[f"transform_row_sub-{s}"] = (ndim, coo.row.astype(np.int64))
            data_vars[f"transform_col_sub-{s}"] = (ndim, coo.col.astype(np.int64))
            data_vars[f"transform_weight_sub-{s}"] = (ndim, coo.data.astype(np.float32))
        else:
            data_vars[f"transform_sub-{s}"] = (
                (vdim, "component"),
                transforms[si].astype(np.float32),
            )
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    ds["responses"].encoding["chunks"] = (1, min(n_trials, 4096), K)
    return ds
