"""Anatomical alignment: a common template that every subject's voxels map onto.

Volume stores (``i, j, k`` + ``affine``): resample onto one MNI-like template grid.
Surface stores (``hemi``, ``vertex``, e.g. NSD on fsaverage): every subject already
lives on the same template mesh, so anatomical alignment is matching by
``(hemi, vertex)`` (:func:`match_vertices`); no interpolation.

Volume template.

The template grid is nilearn's MNI152 brain mask resampled (``nilearn.image.resample_img``)
to the requested resolution, on a lattice with MNI (0, 0, 0) at a voxel centre. Each
subject's betas are resampled by trilinear interpolation, written as a sparse operator
(``n_template_voxels × n_subject_voxels``, at most 8 non-zeros per row) that uses only the
subject's own (selected) voxels: weights of corners outside them are dropped and the rest
renormalised, so the brain edge is not blended with zeros. Inside the brain this equals
``nilearn.image.resample_img(..., interpolation="linear")`` of the volume (tested).

The betas' ``affine`` is taken to map voxels into the template's millimetre space. That
holds for MNI-space data and for the synthetic dataset (an MNI-aligned grid); for
native-space data (e.g. NSD ``func1pt8mm``) it is only an affine approximation, and a
proper registration to MNI has to happen before this stage.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import lru_cache

import nibabel as nib
import numpy as np
import scipy.sparse as sp


@lru_cache(maxsize=4)
def template_grid(resolution_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """MNI152 brain mask on an isotropic ``resolution_mm`` grid (nilearn, bundled data).

    Parameters
    ----------
    resolution_mm : float
        Voxel size of the template grid, mm.

    Returns
    -------
    mask : ndarray of bool, shape (nx, ny, nz)
    affine : ndarray, shape (4, 4)
        Voxel index -> MNI mm.
    """
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import resample_img

    mni = load_mni152_brain_mask(resolution=2)
    corners = np.array([[0, 0, 0], np.array(mni.shape) - 1], dtype=float)
    mm = nib.affines.apply_affine(mni.affine, corners)
    lo, hi = mm.min(axis=0), mm.max(axis=0)
    origin = np.floor(lo / resolution_mm) * resolution_mm
    shape = tuple((np.floor((hi - origin) / resolution_mm).astype(int) + 1).tolist())
    affine = np.diag([resolution_mm, resolution_mm, resolution_mm, 1.0])
    affine[:3, 3] = origin
    src = nib.Nifti1Image(np.asarray(mni.get_fdata(), dtype=np.float32), mni.affine)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Resampling binary images", category=UserWarning)
        res = resample_img(
            src,
            target_affine=affine,
            target_shape=shape,
            interpolation="linear",
            force_resample=True,
            copy_header=True,
        )
    return np.asarray(res.get_fdata()) > 0.5, affine


def voxel_size(affine: np.ndarray) -> float:
    """Geometric-mean voxel edge length of an affine, mm."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3])) ** (1.0 / 3.0))


def trilinear_operator(
    src_ijk: np.ndarray,
    src_affine: np.ndarray,
    target_xyz: np.ndarray,
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Sparse trilinear interpolation from scattered grid voxels to points in mm.

    Parameters
    ----------
    src_ijk : ndarray of int, shape (n_src, 3)
        Voxel indices of the source voxels on their grid (the only voxels used).
    src_affine : ndarray, shape (4, 4)
        Source voxel index -> mm.
    target_xyz : ndarray, shape (n_target, 3)
        Points to interpolate at, mm.

    Returns
    -------
    operator : scipy.sparse.csr_matrix, shape (n_target, n_src), float64
        Rows sum to 1 where covered and are empty elsewhere.
    covered : ndarray of bool, shape (n_target,)
        Whether at least one of the 8 surrounding corners is a source voxel.
    """
    src_ijk = np.asarray(src_ijk, dtype=np.int64)
    lo = src_ijk.min(axis=0) - 1
    shape = tuple((src_ijk.max(axis=0) - lo + 2).tolist())
    lookup = np.full(shape, -1, dtype=np.int64)
    lookup[tuple((src_ijk - lo).T)] = np.arange(len(src_ijk))
    q = nib.affines.apply_affine(np.linalg.inv(src_affine), np.asarray(target_xyz, float)) - lo
    base = np.floor(q).astype(np.int64)
    frac = q - base
    rows, cols, vals = [], [], []
    n = len(q)
    for corner in range(8):
        offset = np.array([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1])
        idx = base + offset
        w = np.prod(np.where(offset == 1, frac, 1.0 - frac), axis=1)
        inside = np.all((idx >= 0) & (idx < np.array(shape)), axis=1)
        col = np.full(n, -1, dtype=np.int64)
        col[inside] = lookup[tuple(idx[inside].T)]
        keep = (col >= 0) & (w > 1e-9)  # drop round-off weights of grid-aligned points
        rows.append(np.flatnonzero(keep))
        cols.append(col[keep])
        vals.append(w[keep])
    op = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n, len(src_ijk)),
    )
    sums = np.asarray(op.sum(axis=1)).ravel()
    covered = sums > 0
    inv = np.zeros(n)
    inv[covered] = 1.0 / sums[covered]
    return sp.csr_matrix(sp.diags(inv) @ op), covered


def match_vertices(
    hemis: Sequence[np.ndarray], vertices: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The surface vertices present in every subject, and where each subject holds them.

    Parameters
    ----------
    hemis : sequence of ndarray of str, shape (n_voxels_s,)
        Hemisphere of every voxel (vertex) of each subject (``"lh"`` / ``"rh"``).
    vertices : sequence of ndarray of int, shape (n_voxels_s,)
        Vertex index within its hemisphere, for every voxel of each subject. Voxel order
        may differ between subjects; ``(hemi, vertex)`` pairs must be unique per subject.

    Returns
    -------
    shared_hemi : ndarray of str, shape (n_shared,)
    shared_vertex : ndarray of int64, shape (n_shared,)
        The ``(hemi, vertex)`` pairs present in every subject, sorted by hemisphere name
        (``lh`` before ``rh``) and then by vertex: the common order of the template.
    index : list of ndarray of int64, shape (n_shared,)
        For each subject, the position of each shared vertex in its voxel list.

    Raises
    ------
    ValueError
        If the inputs disagree in length, a vertex index is negative, or a subject
        lists the same ``(hemi, vertex)`` twice.
    """
    if not hemis or len(hemis) != len(vertices):
        raise ValueError(f"{len(hemis)} hemi arrays and {len(vertices)} vertex arrays")
    hemis = [np.asarray(h).astype(str) for h in hemis]
    vertices = [np.asarray(v).astype(np.int64) for v in vertices]
    names = np.unique(np.concatenate(hemis)) if hemis else np.array([], dtype=str)
    stride = max((int(v.max()) + 1 for v in vertices if len(v)), default=1)
    keys = []
    for s, (h, v) in enumerate(zip(hemis, vertices, strict=True)):
        if h.shape != v.shape or h.ndim != 1:
            raise ValueError(f"subject {s}: hemi {h.shape} and vertex {v.shape} must be 1-D, equal")
        if len(v) and v.min() < 0:
            raise ValueError(f"subject {s}: negative vertex index {int(v.min())}")
        key = np.searchsorted(names, h).astype(np.int64) * stride + v
        if len(np.unique(key)) != len(key):
            raise ValueError(f"subject {s}: some (hemi, vertex) pair appears twice")
        keys.append(key)
    shared = keys[0]
    for key in keys[1:]:
        shared = np.intersect1d(shared, key, assume_unique=True)
    shared = np.unique(shared)  # sorted: hemisphere name, then vertex
    index = []
    for key in keys:
        order = np.argsort(key, kind="stable")
        index.append(order[np.searchsorted(key, shared, sorter=order)].astype(np.int64))
    return names[shared // stride], shared % stride, index
