"""Parcels for piecewise alignment: from an atlas or by clustering voxel coordinates.

Volume stores: parcels are defined in millimetre space, so subjects with different
voxels share them: each subject's voxel takes the label of the parcel it falls in.
Clustering uses only coordinates (never responses), so it cannot leak test data.

Surface stores (``hemi``/``vertex`` coords, no mm coordinates to cluster): parcels come
from a per-hemisphere label file on the same template surface, ``align.atlas`` with
``{hemi}`` in its path (e.g. NSD's ``.../fsaverage/label/{hemi}.HCP_MMP1.mgz``), read
with :func:`surface_atlas_parcels`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
        raise BrainpipeInputError(path, "align.atlas", "atlas image does not exist")
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


#: Placeholder for the hemisphere in a surface atlas path.
HEMI_FIELD = "{hemi}"


def read_surface_labels(path: str | Path) -> np.ndarray:
    """One hemisphere's parcel labels from a FreeSurfer ``.annot``, MGH/MGZ or GIFTI file.

    Parameters
    ----------
    path : path
        ``.annot`` (FreeSurfer annotation), ``.mgh`` / ``.mgz`` (a surface map of shape
        ``(n_vertices, 1, 1[, 1])``, as NSD's fsaverage labels) or ``.gii``.

    Returns
    -------
    ndarray of int64, shape (n_vertices,)
        Label of every vertex (0 or negative: no parcel).
    """
    path = Path(path)
    if not path.exists():
        raise BrainpipeInputError(path, "align.atlas", "surface label file does not exist")
    name = path.name.lower()
    try:
        if name.endswith(".annot"):
            data = np.asarray(nib.freesurfer.read_annot(str(path))[0])
        elif name.endswith((".mgh", ".mgz")):
            data = np.asarray(nib.load(str(path)).dataobj)
        elif name.endswith(".gii"):
            data = np.asarray(nib.load(str(path)).darrays[0].data)
        else:
            raise BrainpipeInputError(
                path, "align.atlas", "expected a .annot, .mgh, .mgz or .gii surface label file"
            )
    except BrainpipeInputError:
        raise
    except Exception as err:  # noqa: BLE001 - nibabel raises several types
        raise BrainpipeInputError(
            path, "align.atlas", f"not a readable label file ({err})"
        ) from err
    if data.ndim > 1 and all(n == 1 for n in data.shape[1:]):
        data = data.reshape(data.shape[0])
    if data.ndim != 1:
        raise BrainpipeInputError(
            path, "shape", f"expected one label per vertex (n_vertices,), got {data.shape}"
        )
    if not np.array_equal(data, np.round(data)):
        raise BrainpipeInputError(path, "align.atlas", "values are not integer parcel labels")
    return data.astype(np.int64)


def surface_atlas_parcels(
    atlas: str | Path,
    hemis_per_subject: Sequence[np.ndarray],
    vertices_per_subject: Sequence[np.ndarray],
    n_vertices: Mapping[str, int] | None = None,
) -> list[np.ndarray]:
    """Labels of each subject's vertices in a per-hemisphere surface parcellation.

    Parameters
    ----------
    atlas : str or path
        Path with ``{hemi}`` in it, filled with each hemisphere name found in the
        subjects' ``hemi`` coords (see :func:`read_surface_labels` for the formats).
    hemis_per_subject : sequence of ndarray of str, shape (n_voxels_s,)
    vertices_per_subject : sequence of ndarray of int, shape (n_voxels_s,)
    n_vertices : mapping hemi -> int, optional
        Vertex count of each hemisphere of the betas' surface (attrs ``n_vertices``);
        a label file of another length is refused.

    Returns
    -------
    list of ndarray of int64, shape (n_voxels_s,)
        Parcel of every vertex, or -1 for unlabelled ones (label 0 or negative). The same
        label number in two hemispheres gives two parcels (hemispheres are aligned
        separately): the right hemisphere's labels are offset past the left's.
    """
    atlas = str(atlas)
    if HEMI_FIELD not in atlas:
        raise BrainpipeInputError(
            atlas,
            "align.atlas",
            f"surface betas need one label file per hemisphere: put {HEMI_FIELD} in the path"
            " (e.g. label/{hemi}.HCP_MMP1.mgz)",
        )
    hemis_per_subject = [np.asarray(h).astype(str) for h in hemis_per_subject]
    names = sorted(set(np.concatenate(hemis_per_subject).tolist()))
    tables = {}
    for hemi in names:
        path = Path(atlas.replace(HEMI_FIELD, hemi))
        table = read_surface_labels(path)
        expected = (n_vertices or {}).get(hemi)
        if expected is not None and len(table) != int(expected):
            raise BrainpipeInputError(
                path,
                "vertices",
                f"has {len(table)} vertices, the betas' {hemi} surface {int(expected)}"
                " (labels must be on the same template surface as the betas)",
            )
        tables[hemi] = (path, table)
    stride = max(int(t.max()) for _, t in tables.values()) + 1 if tables else 1
    labels = []
    for hemis, vertices in zip(hemis_per_subject, vertices_per_subject, strict=True):
        vertices = np.asarray(vertices, dtype=np.int64)
        lab = np.full(len(vertices), -1, dtype=np.int64)
        for rank, hemi in enumerate(names):
            path, table = tables[hemi]
            sel = hemis == hemi
            if not sel.any():
                continue
            v = vertices[sel]
            if v.max() >= len(table):
                raise BrainpipeInputError(
                    path,
                    "vertices",
                    f"has {len(table)} vertices, the betas use vertex {int(v.max())}"
                    " (labels must be on the same template surface as the betas)",
                )
            raw = table[v]
            lab[sel] = np.where(raw > 0, raw + rank * stride, -1)
        labels.append(lab)
    return labels
