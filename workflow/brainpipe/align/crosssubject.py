"""Cross-subject prediction from an alignment store: how well does an alignment carry one
subject's test responses into another subject's voxels?

For every ordered pair (source, target), the source's shared-space responses to the test
stimuli both subjects saw (averaged over repeats; from ``responses`` in
``align/{method}.zarr``) are mapped into the target's voxels through the pseudo-inverse of
the target's transform (:func:`brainpipe.align._solvers.pinv_map`), and correlated voxel by
voxel, across those stimuli, with the target's own standardised test responses. Nothing
here is fitted: the transforms were fitted on shared *training* stimuli only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from brainpipe.align._solvers import pinv_map
from brainpipe.metrics import pearson_r
from brainpipe.storage import open_zarr, write_text_atomic

log = logging.getLogger(__name__)


def back_map(store, s: str, betas, voxels: np.ndarray):
    """Shared space -> subject ``s``'s standardised voxels, as the estimator maps back.

    Functional methods: the pseudo-inverse of the stored transform. Anatomical on a volume:
    trilinear interpolation from the template grid at the subject's voxel centres. On a
    surface: the transpose of the vertex selection.
    """
    if f"transform_sub-{s}" in store:
        return pinv_map(store[f"transform_sub-{s}"].values)
    if "component_i" in store.coords:
        from brainpipe.align.anatomical import trilinear_operator

        ijk = np.stack([betas[c].values[voxels] for c in "ijk"], axis=1)
        affine = np.asarray(betas.attrs["affine"], float).reshape(4, 4)
        xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
        template_ijk = np.stack([store[f"component_{c}"].values for c in "ijk"], axis=1)
        op, _ = trilinear_operator(template_ijk, np.asarray(store.attrs["template_affine"]), xyz)
        return sp.csr_matrix(op).T
    rows = store[f"transform_row_sub-{s}"].values
    cols = store[f"transform_col_sub-{s}"].values
    weights = store[f"transform_weight_sub-{s}"].values.astype(np.float64)
    shape = (store.sizes[f"voxel_sub-{s}"], store.sizes["component"])
    return sp.csr_matrix((weights, (rows, cols)), shape=shape).T


def shared_space_trials(store, subject: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A subject's rows in an align store: ``(valid, stimulus, split)``, each ``(n_rows,)``.

    The store's rows are as many as the most trials any subject has; a subject with fewer
    is padded, its padding rows ``valid`` False.
    """
    valid = store["valid"].sel(subject=subject).values.astype(bool)
    stimulus = store["stimulus"].sel(subject=subject).values.astype(str)
    split = store["split"].sel(subject=subject).values.astype(str)
    return valid, stimulus, split


def measured_trials(
    store, subject: str, split: np.ndarray, betas, voxels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A subject's measured betas of its aligned voxels, standardised as the alignment was
    fitted (the store's ``mean_sub-*`` and ``scale_sub-*``, from training trials).

    ``split`` is the subject's split in the store (:func:`shared_space_trials`), whose
    first rows are the betas' trials.

    Returns
    -------
    stimulus, split : ndarray of str, shape (n_trials,)
    values : ndarray, shape (n_trials, n_voxels)
    """
    split = split[: betas.sizes["trial"]]
    values = betas["betas"].isel(voxel=voxels).values
    values = (values - store[f"mean_sub-{subject}"].values) / store[f"scale_sub-{subject}"].values
    return betas["stimulus"].values.astype(str), split, values


def test_means(stimuli: np.ndarray, split: np.ndarray, values: np.ndarray, keep: list[str]):
    """Per-stimulus means of ``values`` over the test trials of the stimuli in ``keep``, in
    that order: ``(len(keep), n_columns)`` float64."""
    frame = pd.DataFrame(values)
    frame["stimulus"] = stimuli
    test = frame[(split == "test") & np.isin(stimuli, keep)]
    return test.groupby("stimulus").mean().loc[keep].to_numpy(np.float64)


def cross_subject_scores(
    align_path: str | Path, betas_paths: Mapping[str, str | Path]
) -> pd.DataFrame:
    """Mean test r of each target subject predicted from each source, for one method.

    Parameters
    ----------
    align_path : path
        ``align/{method}.zarr``.
    betas_paths : mapping subject -> path
        The subjects' betas stores (the targets' measured test responses).

    Returns
    -------
    DataFrame
        ``method, source, target, n_test_stimuli, n_voxels, mean_r, median_r``.
    """
    store = open_zarr(align_path)
    method = str(store.attrs["method"])
    subjects = [str(s) for s in store.attrs["subjects"]]
    trials = {s: shared_space_trials(store, s) for s in subjects}
    test = {s: set(stim[split == "test"]) for s, (_, stim, split) in trials.items()}
    rows = []
    for target in subjects:
        betas = open_zarr(betas_paths[target])
        voxels = store[f"voxel_sub-{target}"].values
        back = None
        for source in subjects:
            if source == target:
                continue
            shared = sorted(test[source] & test[target])
            if len(shared) < 3:
                continue
            valid, stim, split = trials[source]
            Z = test_means(
                stim[valid],
                split[valid],
                store["responses"].sel(subject=source).values[valid],
                shared,
            )
            if back is None:
                back = back_map(store, target, betas, voxels)
                t_stim, t_split, observed_std = measured_trials(
                    store, target, trials[target][2], betas, voxels
                )
            observed = test_means(t_stim, t_split, observed_std, shared)
            r = pearson_r(observed, np.asarray(back.T @ Z.T).T if sp.issparse(back) else Z @ back)
            rows.append(
                {
                    "method": method,
                    "source": source,
                    "target": target,
                    "n_test_stimuli": len(shared),
                    "n_voxels": len(voxels),
                    "mean_r": float(np.mean(r)),
                    "median_r": float(np.median(r)),
                }
            )
    return pd.DataFrame(
        rows,
        columns=["method", "source", "target", "n_test_stimuli", "n_voxels", "mean_r", "median_r"],
    )


def write_cross_subject_scores(
    align_paths: list[str | Path], betas_paths: Mapping[str, str | Path], out_tsv: str | Path
) -> pd.DataFrame:
    """:func:`cross_subject_scores` of every method, one table (written atomically).

    Parameters
    ----------
    align_paths : list of path
        One ``align/{method}.zarr`` per method.
    betas_paths : mapping subject -> path
    out_tsv : path

    Returns
    -------
    DataFrame
        One row per method × source × target.
    """
    table = pd.concat([cross_subject_scores(p, betas_paths) for p in align_paths])
    for method, rows in table.groupby("method"):
        log.info(
            "%s: mean cross-subject test r %.3f over %d pairs",
            method,
            rows["mean_r"].mean(),
            len(rows),
        )
    write_text_atomic(table.to_csv(sep="\t", index=False, float_format="%.6g"), out_tsv)
    return table
