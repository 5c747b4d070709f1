"""Parcels for piecewise alignment: from an atlas or by clustering voxel coordinates.

Parcels are defined in millimetre space, so subjects with different voxels share
them: each subject's voxel takes the label of the parcel it falls in. Clustering
uses only coordinates (never responses), so it cannot leak test data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from brainpipe.errors import BrainpipeInputError


def cluster_parcels(
    xyz_per_subject: Sequence[np.ndarray], n_parcels: int, seed: int = 0
) -> list[np.ndarray]:
    """K-means parcels of the pooled voxel coordinates of all subjects.

    Parameters
    ----------
    xyz_per_subject : sequence of ndarray, shape (n_voxels_s, 3)
        Voxel centres in mm.
    n_parcels : int
        Number of clusters (capped at the smallest subject's voxel count).
    seed : int

    Returns
    -------
    list of ndarray of int64, shape (n_voxels_s,)
        Parcel label (0..n_parcels-1) of every voxel of each subject: the nearest centroid.
    """
    from sklearn.cluster import KMeans

    pooled = np.concatenate([np.asarray(x, dtype=np.float64) for x in xyz_per_subject])
    n = int(min(n_parcels, min(len(x) for x in xyz_per_subject)))
    km = KMeans(n_clusters=n, n_init=4, random_state=seed).fit(pooled)
    centres = km.cluster_centers_
    labels = []
    for xyz in xyz_per_subject:
        d = ((np.asarray(xyz, float)[:, None, :] - centres[None]) ** 2).sum(-1)
        labels.append(np.argmin(d, axis=1).astype(np.int64))
    return labels


def atlas_parcels(atlas: str | Path, xyz_per_subject: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Labels of each subject's voxels in a label image (nearest atlas voxel; 0 = background).

    Parameters
    ----------
    atlas : path
        NIfTI label image in the same millimetre space as the betas' affines.
    xyz_per_subject : sequence of ndarray, shape (n_voxels_s, 3)

    Returns
    -------
    list of ndarray of int64, shape (n_voxels_s,)
        Atlas label, or -1 for voxels outside the atlas or on background (0).
    """
    path = Path(atlas)
    if not path.exists():
        raise BrainpipeInputError(path, "align.parcels.atlas", "atlas image does not exist")
    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    if data.ndim != 3:
        raise BrainpipeInputError(path, "shape", f"expected a 3-D label image, got {data.shape}")
    inv = np.linalg.inv(img.affine)
    labels = []
    for xyz in xyz_per_subject:
        ijk = np.rint(nib.affines.apply_affine(inv, np.asarray(xyz, float))).astype(np.int64)
        inside = np.all((ijk >= 0) & (ijk < np.array(data.shape)), axis=1)
        lab = np.full(len(ijk), -1, dtype=np.int64)
        lab[inside] = data[tuple(ijk[inside].T)].astype(np.int64)
        lab[lab == 0] = -1
        labels.append(lab)
    return labels
