"""Decoding models in an aligned space: fit on one subject, decode another.

The decoding counterpart of :mod:`brainpipe.align.encoding`. For each alignment method
(``align/{method}.zarr``) and each *source* subject, a ridge decoder maps the source's
shared-space responses of its training trials (every training trial, shared or not) to the
stimulus features of those trials (each feature z-scored with the source's training
statistics). The decoder is then applied to a *target* subject's shared-space responses to
its test stimuli (averaged over repeats; the target's own transform put them in the shared
space), and the decoded features are matched against the true features of every test
stimulus: top-1 identification among all of the target's test stimuli (chance ``1 /
n_test_stimuli``) and 2-way identification (chance 0.5), as the decoders' own evaluation
scores them (:func:`brainpipe.models.evaluation.retrieval_per_query`). ``source == target``
rows are the decoder scored on its own subject (the within-subject reference in the shared
space); ``source != target`` rows decode a subject whose responses the decoder never saw.

Nothing here sees a test stimulus while fitting: the alignment transforms were fitted on
shared *training* stimuli, the decoder on the source's training trials with its penalty
chosen by leave-one-out GCV on them, and the features' PCA on training stimuli.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from brainpipe.align.crosssubject import test_means
from brainpipe.align.encoding import DEFAULT_ALPHAS, pair_row, training_trials
from brainpipe.models.data import features_for
from brainpipe.models.evaluation import retrieval_per_query, similarity_matrix
from brainpipe.storage import open_zarr, write_text_atomic

log = logging.getLogger(__name__)

#: Columns of ``align/decoding.tsv``.
COLUMNS = ["method", "features", "source", "target", "relation", "alpha", "n_train_trials",
           "n_test_stimuli", "n_components", "top1", "top1_chance", "two_way",
           "two_way_chance"]  # fmt: skip


def _fit_decoder(store, source: str, features, features_path: str, alphas: Sequence[float]):
    """Ridge from the source's shared-space training responses to its z-scored features."""
    from sklearn.linear_model import RidgeCV

    train, stimuli = training_trials(store, source)
    Y = features_for(features, stimuli, features_path, dtype=np.float64)
    y_mean, y_sd = Y.mean(axis=0), Y.std(axis=0)
    y_sd[y_sd == 0] = 1.0  # a constant feature decodes to its mean
    Z = store["responses"].sel(subject=source).values[train].astype(np.float64)
    model = RidgeCV(alphas=list(alphas), fit_intercept=True).fit(Z, (Y - y_mean) / y_sd)
    return model, (y_mean, y_sd), int(train.sum())


def aligned_decoding_scores(
    align_path: str | Path,
    features_path: str | Path,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
) -> pd.DataFrame:
    """Within- and cross-subject identification by decoders fitted in one aligned space.

    Parameters
    ----------
    align_path : path
        ``align/{method}.zarr`` (:mod:`brainpipe.align.store`): every trial's shared-space
        responses, split and stimulus per subject.
    features_path : path
        ``features/{name}.zarr`` (``features(stimulus, feature)``, PCA fitted on training
        stimuli): the decoding targets.
    alphas : sequence of float
        Ridge penalties; one is chosen per source by leave-one-out GCV on training trials.

    Returns
    -------
    DataFrame
        :data:`COLUMNS`; one row per source x target (``relation`` ``within`` or ``cross``).
        Targets with fewer than 3 test stimuli are skipped.
    """
    store = open_zarr(align_path)
    features = open_zarr(features_path)
    method = str(store.attrs["method"])
    name = str(features.attrs.get("feature_model", Path(features_path).stem.replace(".zarr", "")))
    subjects = [str(s) for s in store.attrs["subjects"]]
    fitted = {s: _fit_decoder(store, s, features, str(features_path), alphas) for s in subjects}
    rows = []
    for target in subjects:
        valid = store["valid"].sel(subject=target).values.astype(bool)
        stim = store["stimulus"].sel(subject=target).values.astype(str)[valid]
        split = store["split"].sel(subject=target).values.astype(str)[valid]
        test = sorted(set(stim[split == "test"]))
        if len(test) < 3:
            continue
        responses = store["responses"].sel(subject=target).values[valid]
        Z_test = test_means(stim, split, responses, test)
        true = features_for(features, np.asarray(test), str(features_path), dtype=np.float64)
        for source in subjects:
            model, (y_mean, y_sd), n_train = fitted[source]
            # Compare in the source's standardised units: the true features through the
            # same training statistics (a per-feature affine map, fitted on training rows).
            scores = retrieval_per_query(
                similarity_matrix(model.predict(Z_test), (true - y_mean) / y_sd), ks=(1,)
            )
            rows.append(
                {
                    **pair_row(method, name, source, target, model, n_train, len(test)),
                    "n_components": int(store.sizes["component"]),
                    "top1": float(scores["top1"].mean()),
                    "top1_chance": 1.0 / len(test),
                    "two_way": float(scores["two_way"].mean()),
                    "two_way_chance": 0.5,
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def write_aligned_decoding_scores(
    align_paths: Sequence[str | Path],
    features_paths: Sequence[str | Path],
    out_tsv: str | Path,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
) -> pd.DataFrame:
    """:func:`aligned_decoding_scores` of every method x feature model, one table (atomic)."""
    table = pd.concat(
        [aligned_decoding_scores(a, f, alphas) for a in align_paths for f in features_paths]
    )
    for (method, feats, relation), rows in table.groupby(["method", "features", "relation"]):
        log.info("%s / %s, %s-subject: top-1 %.3f (chance %.3f), 2-way %.3f over %d pairs",
                 method, feats, relation, rows["top1"].mean(), rows["top1_chance"].mean(),
                 rows["two_way"].mean(), len(rows))  # fmt: skip
    write_text_atomic(table.to_csv(sep="\t", index=False, float_format="%.6g"), out_tsv)
    return table
