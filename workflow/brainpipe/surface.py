"""fMRIPrep's surface outputs (fsaverage GIFTI time series): read, check, ROI masks.

fMRIPrep writes a run sampled on an fsaverage surface as one GIFTI file per hemisphere,
``<run>_hemi-{L,R}_space-fsaverage<N>_bold.func.gii``, with one data array per volume
("Outputs of fMRIPrep", https://fmriprep.org/en/stable/outputs.html). A surface dataset's
"voxels" are the vertices of both hemispheres, left first, each in vertex order; stores
label them with the coords ``hemi`` (``lh``/``rh``) and ``vertex`` (the index within the
hemisphere), as NSD's fsaverage betas do (:mod:`brainpipe.datasets.nsd_surface`).

ROIs on a surface come from files the dataset provides, one per hemisphere: FreeSurfer
``.label`` (vertex list) or ``.annot`` (a parcellation; ``labels`` picks parcels by name or
index), or a per-vertex ``.gii`` / ``.mgh`` / ``.mgz`` map (``labels`` picks values, else
any value > 0). The data view stores each ROI as a per-vertex uint8 GIFTI per hemisphere.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from brainpipe.errors import BrainpipeInputError

#: Vertices per hemisphere of FreeSurfer's fsaverage surfaces (icosahedron orders 3..7).
FSAVERAGE_VERTICES = {
    "fsaverage3": 642,
    "fsaverage4": 2562,
    "fsaverage5": 10242,
    "fsaverage6": 40962,
    "fsaverage7": 163842,
    "fsaverage": 163842,
}
#: Hemispheres: BIDS ``hemi-`` entity -> the store's ``hemi`` coord (FreeSurfer's names).
HEMIS = {"L": "lh", "R": "rh"}


def is_surface_space(space: str | None) -> bool:
    """Whether ``space`` names an fsaverage surface (:data:`FSAVERAGE_VERTICES`)."""
    return str(space) in FSAVERAGE_VERTICES


def gifti_header(path: str | Path) -> tuple[int, int]:
    """(number of data arrays, vertices of the first) from a GIFTI file's XML, not its data.

    Cheap enough to check every run when the data view is built; the data is decoded
    later by :func:`load_gifti_series` (``validate_inputs``).
    """
    path = Path(path)
    text = path.read_bytes()
    n_arrays = len(re.findall(rb"<DataArray[\s>]", text))
    dim0 = re.search(rb'Dim0\s*=\s*"(\d+)"', text)
    if n_arrays == 0 or dim0 is None:
        raise BrainpipeInputError(
            path, "DataArray", "no data array: expected a GIFTI time series, one array per volume"
        )
    return n_arrays, int(dim0.group(1))


def load_gifti_series(path: str | Path, what: str) -> np.ndarray:
    """One hemisphere's time series, shape (n_scans, n_vertices) float32.

    Raises
    ------
    BrainpipeInputError
        The file does not decode as GIFTI, has no data array, arrays of differing lengths
        or of more than one dimension, or non-numeric samples.
    """
    path = Path(path)
    try:
        img = nib.load(path)
    except Exception as err:  # nibabel / expat raise several types for a damaged file
        raise BrainpipeInputError(
            path, "<gifti>", f"{what} does not decode as GIFTI ({type(err).__name__}: {err})"
        ) from None
    arrays = getattr(img, "darrays", None)
    if not arrays:
        raise BrainpipeInputError(
            path, "DataArray", f"{what} has no data array; expected one per volume"
        )
    n_vertices = None
    for n, arr in enumerate(arrays):
        data = np.asarray(arr.data)
        if data.ndim != 1 and not (data.ndim == 2 and 1 in data.shape):
            raise BrainpipeInputError(
                path, f"DataArray[{n}].Dim", f"shape {data.shape}; expected one value per vertex"
            )
        if data.dtype.kind not in "iuf":
            raise BrainpipeInputError(
                path, f"DataArray[{n}].DataType", f"{data.dtype} samples; expected numbers"
            )
        if n_vertices is None:
            n_vertices = data.size
        elif data.size != n_vertices:
            raise BrainpipeInputError(
                path, f"DataArray[{n}].Dim0",
                f"{data.size} vertices, the first array has {n_vertices}",
            )  # fmt: skip
    return np.stack([np.asarray(a.data, dtype=np.float32).ravel() for a in arrays])


def expected_vertices(space: str, path: str | Path, n_vertices: int) -> None:
    """Check a hemisphere's vertex count against its fsaverage space."""
    want = FSAVERAGE_VERTICES.get(space)
    if want is not None and n_vertices != want:
        raise BrainpipeInputError(
            path, "Dim0", f"{n_vertices} vertices; {space} has {want} per hemisphere"
        )


def read_surface_roi(
    path: str | Path, n_vertices: int, labels: list[Any] | None, field: str
) -> np.ndarray:
    """One hemisphere's ROI as a boolean per-vertex mask, from a file a dataset provides.

    Parameters
    ----------
    path : path
        FreeSurfer ``.label`` (vertex indices), ``.annot`` (parcellation), or a per-vertex
        map (``.gii``, ``.mgh``, ``.mgz``).
    n_vertices : int
        Vertices of the hemisphere (the data's).
    labels : list or None
        ``.annot``: parcel names (or indices) to take; per-vertex maps: values to take
        (None: any value > 0). Not used for ``.label``.
    field : str
        Config key named in errors (``source.rois.<name>.file``).
    """
    path = Path(path)
    if not path.exists():
        raise BrainpipeInputError(path, field, "ROI file is missing")
    name = path.name
    try:
        if name.endswith(".label"):
            vertices = np.atleast_1d(np.asarray(nib.freesurfer.read_label(str(path)), dtype=int))
            if len(vertices) and (vertices.min() < 0 or vertices.max() >= n_vertices):
                raise BrainpipeInputError(
                    path, "vertex", f"vertex {int(vertices.max())} outside the surface's "
                    f"{n_vertices} vertices (a label of another surface?)",
                )  # fmt: skip
            mask = np.zeros(n_vertices, dtype=bool)
            mask[vertices] = True
            return mask
        if name.endswith(".annot"):
            codes, _ctab, names = nib.freesurfer.read_annot(str(path))
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
            values = np.asarray(codes)
            if labels is None:
                raise BrainpipeInputError(
                    path, field.replace(".file", ".labels"),
                    f"an .annot needs the parcels to take (it has {names[:10]}...)",
                )  # fmt: skip
            idx = []
            for lab in labels:
                if isinstance(lab, str):
                    if lab not in names:
                        raise BrainpipeInputError(
                            path, field.replace(".file", ".labels"),
                            f"parcel {lab!r} is not in the annotation (it has {names})",
                        )  # fmt: skip
                    idx.append(names.index(lab))
                else:
                    idx.append(int(lab))
            mask = np.isin(values, idx)
        else:
            img = nib.load(path)
            if hasattr(img, "darrays"):
                values = np.asarray(img.darrays[0].data).ravel()
            else:
                values = np.asarray(img.dataobj).ravel()
            mask = np.isin(values, labels) if labels else values > 0
    except BrainpipeInputError:
        raise
    except Exception as err:  # nibabel raises several types for a damaged file
        raise BrainpipeInputError(
            path, field, f"ROI file does not decode ({type(err).__name__}: {err})"
        ) from None
    if mask.size != n_vertices:
        raise BrainpipeInputError(
            path, "Dim0", f"{mask.size} vertices; the data's hemisphere has {n_vertices}"
        )
    return mask


def write_vertex_mask(mask: np.ndarray, path: str | Path) -> None:
    """A per-vertex boolean mask as a one-array uint8 GIFTI."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = nib.gifti.GiftiDataArray(np.asarray(mask, dtype=np.uint8), datatype="NIFTI_TYPE_UINT8")
    nib.save(nib.gifti.GiftiImage(darrays=[arr]), path)


def read_vertex_mask(path: str | Path, what: str) -> np.ndarray:
    """A mask written by :func:`write_vertex_mask` (checked: decodes, one array)."""
    return load_gifti_series(path, what)[0] > 0


def vertex_coords(n_vertices: dict[str, int]) -> dict[str, np.ndarray]:
    """``hemi`` and ``vertex`` of every vertex of both hemispheres, left first."""
    hemi = np.concatenate([np.full(n, h) for h, n in n_vertices.items()])
    vertex = np.concatenate([np.arange(n, dtype=np.int32) for n in n_vertices.values()])
    return {"hemi": hemi, "vertex": vertex}


def surface_roi_membership(
    layout: Any, subject: str, rois: list[str], hemi: np.ndarray, vertex: np.ndarray
) -> dict[str, np.ndarray]:
    """Boolean ROI membership of the vertices ``(hemi, vertex)`` (a store's coords, which
    leave out dropped dead vertices), from the data view's per-hemisphere masks."""
    hemi = np.asarray(hemi).astype(str)
    vertex = np.asarray(vertex, dtype=int)
    members = {}
    for roi in rois:
        member = np.zeros(len(vertex), dtype=bool)
        for h, fs in HEMIS.items():
            sel = hemi == fs
            path = layout.surface_roi(subject, roi, h)
            member[sel] = read_vertex_mask(path, f"ROI mask {roi} ({h})")[vertex[sel]]
        members[roi] = member
    return members
