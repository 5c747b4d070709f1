"""Brain maps of per-voxel accuracy and noise ceiling, from the evaluate jobs' scores.

Volume stores (voxels with ``i, j, k`` on the subject's grid) are drawn with nilearn's
``plot_stat_map`` on that grid (``plot_glass_brain`` when the space is MNI). Surface stores
on fsaverage (vertices with ``hemi``) are drawn on the fsaverage5 mesh nilearn ships: the
first 10,242 vertices of each fsaverage hemisphere are fsaverage5's, since the meshes are
successive subdivisions of one icosahedron, so no download is needed.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from brainpipe.report.figures import PAGE_WIDTH_IN  # noqa: E402
from brainpipe.storage import open_zarr  # noqa: E402

#: Vertices per hemisphere of fsaverage5 (the mesh nilearn ships).
FSAVERAGE5_VERTICES = 10242


def merge_voxel_scores(score_paths: list[str | Path], variable: str) -> xr.DataArray:
    """One map from the per-ROI score stores of one subject × model: the union of voxels.

    Voxels in several ROIs keep the value of the first store listing them.

    Parameters
    ----------
    score_paths : list of path
        ``scores.zarr`` of the same subject, model and features over several ROIs.
    variable : str
        ``r``, ``score`` or ``noise_ceiling``.

    Returns
    -------
    DataArray, dims ``(voxel,)``, with the stores' voxel coordinates.
    """
    parts = []
    for path in score_paths:
        store = open_zarr(path)
        parts.append(store[variable].load())
    merged = xr.concat(parts, dim="voxel")
    keys = [c for c in ("i", "j", "k", "hemi", "vertex") if c in merged.coords]
    if keys:
        index = np.stack([merged[c].values.astype(str) for c in keys], axis=1)
        _, first = np.unique(index, axis=0, return_index=True)
        merged = merged.isel(voxel=np.sort(first))
    return merged


def to_volume(values: xr.DataArray, shape: tuple[int, int, int], affine: np.ndarray):
    """A NIfTI image with ``values`` at their ``i, j, k`` and NaN elsewhere."""
    import nibabel as nib

    volume = np.full(shape, np.nan, np.float32)
    volume[values["i"].values, values["j"].values, values["k"].values] = values.values
    return nib.Nifti1Image(volume, np.asarray(affine, float))


def _maps(score_paths: list[str | Path]) -> dict[str, xr.DataArray]:
    return {
        "test r": merge_voxel_scores(score_paths, "r"),
        "noise ceiling (%)": merge_voxel_scores(score_paths, "noise_ceiling"),
    }


def _grid(betas_path: str | Path) -> tuple[tuple[int, int, int], np.ndarray, str] | None:
    attrs = open_zarr(betas_path).attrs
    if "volume_shape" not in attrs or "affine" not in attrs:
        return None
    shape = tuple(int(s) for s in np.asarray(attrs["volume_shape"]).ravel()[:3])
    return shape, np.asarray(attrs["affine"], float).reshape(4, 4), str(attrs.get("space", ""))


def _draw_volume(ax, image, title: str, vmax: float, space: str) -> None:
    from nilearn import plotting

    kwargs = dict(axes=ax, title=title, colorbar=True, vmax=vmax, cmap="inferno")
    if space.upper().startswith("MNI"):
        plotting.plot_glass_brain(image, plot_abs=False, display_mode="lyrz", **kwargs)
    else:  # the subject's own grid has no template: the map itself is the picture
        plotting.plot_stat_map(
            image,
            bg_img=None,
            display_mode="z",
            cut_coords=4,
            black_bg=False,
            annotate=False,
            **kwargs,
        )


def _draw_surface(axes, mesh, sulcal, values: xr.DataArray, title: str, vmax: float) -> None:
    from nilearn import plotting

    on_hemi = np.char.lower(values["hemi"].values.astype(str))
    for ax, hemi in zip(axes, ("left", "right"), strict=True):
        data = np.full(FSAVERAGE5_VERTICES, np.nan)
        keep = np.isin(on_hemi, [hemi, hemi[0], f"{hemi[0]}h"])
        vertex = values["vertex"].values[keep].astype(int)
        ok = vertex < FSAVERAGE5_VERTICES
        data[vertex[ok]] = values.values[keep][ok]
        plotting.plot_surf_stat_map(
            mesh["inflated"].parts[hemi],
            data,
            hemi=hemi,
            view="lateral",
            axes=ax,
            colorbar=hemi == "right",
            vmax=vmax,
            cmap="inferno",
            title=f"{title}, {hemi}",
            bg_map=np.asarray(sulcal.data.parts[hemi]),
        )


def score_maps_figure(
    score_paths: dict[str, list[str | Path]], betas_paths: dict[str, str | Path], label: str
) -> plt.Figure | None:
    """Test r and noise ceiling of one model, a row per subject; None without geometry.

    Volume stores are drawn on each subject's grid (axial slices; a glass brain in MNI
    space), surface stores on fsaverage5 (lateral views of both hemispheres).

    Parameters
    ----------
    score_paths : dict of subject -> list of path
        The model's ``scores.zarr`` over ROIs, per subject (encoding jobs).
    betas_paths : dict of subject -> path
        The subjects' betas stores: their attrs give the grid (``volume_shape``,
        ``affine``, ``space``).
    label : str
        The model, for the titles.
    """
    subjects = sorted(s for s in score_paths if s in betas_paths)
    maps = {s: _maps(score_paths[s]) for s in subjects}
    if not maps:
        return None
    vmax = {
        name: float(max(max(np.nanmax(np.abs(m[name].values)) for m in maps.values()), 1e-3))
        for name in ("test r", "noise ceiling (%)")
    }
    first = maps[subjects[0]]["test r"]
    if {"i", "j", "k"} <= set(first.coords) and _grid(betas_paths[subjects[0]]) is not None:
        fig, axes = plt.subplots(
            len(subjects), 2, figsize=(PAGE_WIDTH_IN, 1.6 * len(subjects)), squeeze=False
        )
        for row, s in enumerate(subjects):
            shape, affine, space = _grid(betas_paths[s])
            for col, (name, values) in enumerate(maps[s].items()):
                image = to_volume(values, shape, affine)
                _draw_volume(axes[row, col], image, f"sub-{s} {name}", vmax[name], space)
        fig.suptitle(label, fontsize=9, y=1.0)
        return fig
    if {"hemi", "vertex"} <= set(first.coords):
        from nilearn import datasets

        mesh = datasets.load_fsaverage("fsaverage5")
        sulcal = datasets.load_fsaverage_data(mesh="fsaverage5", data_type="sulcal")
        fig, axes = plt.subplots(
            len(subjects),
            4,
            figsize=(PAGE_WIDTH_IN, 2.2 * len(subjects)),
            subplot_kw={"projection": "3d"},
            squeeze=False,
        )
        for row, s in enumerate(subjects):
            for n, (name, values) in enumerate(maps[s].items()):
                _draw_surface(
                    axes[row, 2 * n : 2 * n + 2],
                    mesh,
                    sulcal,
                    values,
                    f"sub-{s} {name}",
                    vmax[name],
                )
        return fig
    return None
