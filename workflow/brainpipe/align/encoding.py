"""Encoding models in an aligned space: fit on one subject, predict another.

For each alignment method (``align/{method}.zarr``) and each *source* subject, a ridge
encoding model maps stimulus features to the source's shared-space responses of its
training trials (every training trial, shared or not: the features say what was shown).
The model predicts the shared-space response to each test stimulus, which is mapped into a
*target* subject's voxels through the target's transform (the same back-map as
:mod:`brainpipe.align.crosssubject`) and correlated, voxel by voxel and across test stimuli,
with the target's own standardised test responses (averaged over repeats). ``source ==
target`` rows are the same model scored on its own subject (the within-subject reference in
the shared space); ``source != target`` rows are cross-subject prediction by a model that
never saw the target's responses.

Nothing here sees a test stimulus while fitting: the alignment transforms were fitted on
shared *training* stimuli, the ridge penalty is chosen by leave-one-out GCV on the source's
training trials, and the features' PCA was fitted on training stimuli.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from brainpipe.align.crosssubject import (
    back_map,
    measured_trials,
    shared_space_trials,
    test_means,
)
from brainpipe.errors import BrainpipeInputError
from brainpipe.metrics import pearson_r
from brainpipe.models.data import features_for
from brainpipe.storage import open_zarr, write_text_atomic

log = logging.getLogger(__name__)

#: Columns of ``align/encoding.tsv``.
COLUMNS = ["method", "features", "source", "target", "relation", "alpha", "n_train_trials",
           "n_test_stimuli", "n_voxels", "mean_r", "median_r"]  # fmt: skip
DEFAULT_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0)


def training_trials(store, subject: str) -> tuple[np.ndarray, np.ndarray]:
    """A subject's training trials in an align store: the trial mask and their stimuli.

    Raises :class:`BrainpipeInputError` with fewer than 3 (nothing to fit a model on).
    """
    valid, stimulus, split = shared_space_trials(store, subject)
    train = valid & (split == "train")
    if train.sum() < 3:
        raise BrainpipeInputError(
            "align",
            "split",
            f"subject {subject} has {int(train.sum())} training trials in the store",
        )
    return train, stimulus[train]


def pair_row(method, features, source, target, model, n_train, n_test) -> dict:
    """The columns every within/cross-subject encoding score row starts with."""
    return {
        "method": method,
        "features": features,
        "source": source,
        "target": target,
        "relation": "within" if source == target else "cross",
        "alpha": float(model.alpha_),
        "n_train_trials": n_train,
        "n_test_stimuli": n_test,
    }


def _fit_source(store, source: str, features, features_path: str, alphas: Sequence[float]):
    """Ridge from features to the source's shared-space responses on its training trials."""
    from sklearn.linear_model import RidgeCV

    train, stimuli = training_trials(store, source)
    X = features_for(features, stimuli, features_path, dtype=np.float64)
    Z = store["responses"].sel(subject=source).values[train].astype(np.float64)
    model = RidgeCV(alphas=list(alphas), fit_intercept=True).fit(X, Z)
    return model, int(train.sum())


def aligned_encoding_scores(
    align_path: str | Path,
    betas_paths: Mapping[str, str | Path],
    features_path: str | Path,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
) -> pd.DataFrame:
    """Within- and cross-subject test r of encoding models fitted in one aligned space.

    Parameters
    ----------
    align_path : path
        ``align/{method}.zarr`` (:mod:`brainpipe.align.store`).
    betas_paths : mapping subject -> path
        The subjects' betas stores (the targets' measured test responses).
    features_path : path
        ``features/{name}.zarr`` (``features(stimulus, feature)``, PCA fitted on training
        stimuli).
    alphas : sequence of float
        Ridge penalties; one is chosen per source by leave-one-out GCV on training trials.

    Returns
    -------
    DataFrame
        :data:`COLUMNS`; one row per source x target (``relation`` ``within`` or ``cross``).
    """
    store = open_zarr(align_path)
    features = open_zarr(features_path)
    method = str(store.attrs["method"])
    name = str(features.attrs.get("feature_model", Path(features_path).stem.replace(".zarr", "")))
    subjects = [str(s) for s in store.attrs["subjects"]]
    trials = {s: shared_space_trials(store, s) for s in subjects}
    fitted = {s: _fit_source(store, s, features, str(features_path), alphas) for s in subjects}
    rows = []
    for target in subjects:
        betas = open_zarr(betas_paths[target])
        voxels = store[f"voxel_sub-{target}"].values
        _, stim, split = trials[target]
        test = sorted(set(stim[split == "test"]))
        if len(test) < 3:
            continue
        back = back_map(store, target, betas, voxels)
        t_stim, t_split, observed_std = measured_trials(store, target, split, betas, voxels)
        observed = test_means(t_stim, t_split, observed_std, test)
        X_test = features_for(features, np.asarray(test), str(features_path), dtype=np.float64)
        for source in subjects:
            model, n_train = fitted[source]
            Z = model.predict(X_test)
            predicted = np.asarray(back.T @ Z.T).T if sp.issparse(back) else Z @ back
            r = pearson_r(observed, predicted)
            rows.append(
                {
                    **pair_row(method, name, source, target, model, n_train, len(test)),
                    "n_voxels": len(voxels),
                    "mean_r": float(np.mean(r)),
                    "median_r": float(np.median(r)),
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def write_aligned_encoding_scores(
    align_paths: Sequence[str | Path],
    betas_paths: Mapping[str, str | Path],
    features_paths: Sequence[str | Path],
    out_tsv: str | Path,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
) -> pd.DataFrame:
    """:func:`aligned_encoding_scores` of every method x feature model, one table (atomic)."""
    table = pd.concat(
        [
            aligned_encoding_scores(a, betas_paths, f, alphas)
            for a in align_paths
            for f in features_paths
        ]
    )
    for (method, feats, relation), rows in table.groupby(["method", "features", "relation"]):
        log.info("%s / %s, %s-subject: mean test r %.3f over %d pairs",
                 method, feats, relation, rows["mean_r"].mean(), len(rows))  # fmt: skip
    write_text_atomic(table.to_csv(sep="\t", index=False, float_format="%.6g"), out_tsv)
    return table
