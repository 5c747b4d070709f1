"""The registry's decoders in an aligned space: fit on one subject, decode another.

The decoding counterpart of :mod:`brainpipe.align.encoding`. For each alignment method
(``align/{method}.zarr``), each decoding model of ``align.decoding_models`` (registered in
:mod:`brainpipe.models`: ``ridgedecoder``, ``mlpdecoder``...) and each *source* subject,
the model's own fit function is run on a :class:`~brainpipe.models.data.JobData` whose
"voxels" are the shared-space components: its training rows are the source's shared-space
responses of its training trials (every training trial, shared or not) with those trials'
stimulus features, its test rows are *every* subject's shared-space responses to its own
test stimuli (averaged over repeats; each subject's own transform put them in the shared
space). A fit function only predicts its test rows, so one fit per source decodes every
target. Each target's decoded features are matched against the true features of all of its
test stimuli: top-1 identification among them (chance ``1 / n_test_stimuli``) and 2-way
identification (chance 0.5), per query by
:func:`brainpipe.models.evaluation.retrieval_per_query`, both vectors in the source's
standardised feature units (each feature z-scored with the source's training statistics,
so no principal component of the features outweighs the rest). ``source == target`` rows
are the decoder scored on its own subject (the within-subject reference in the shared
space); ``source != target`` rows decode a subject whose responses the decoder never saw.

Nothing here sees a test stimulus while fitting: the alignment transforms were fitted on
shared *training* stimuli, each decoder on the source's training trials alone (its test
rows are only predicted), and the features' PCA on training stimuli.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainpipe.align.crosssubject import shared_space_trials, test_means
from brainpipe.align.encoding import training_trials
from brainpipe.config import schema_default
from brainpipe.errors import BrainpipeInputError
from brainpipe.models.data import JobData, features_for, fill_missing, standardiser
from brainpipe.models.evaluation import retrieval_per_query, similarity_matrix
from brainpipe.storage import open_zarr, write_text_atomic

log = logging.getLogger(__name__)

#: Columns of ``align/decoding.tsv``.
COLUMNS = ["method", "model", "features", "source", "target", "relation", "n_train_trials",
           "n_test_stimuli", "n_components", "top1", "top1_chance", "two_way",
           "two_way_chance", "fit_info"]  # fmt: skip

#: ``align.decoding_models`` when the config names none: the schema's default (its one home).
DEFAULT_MODELS = tuple(schema_default("align.decoding_models"))


def aligned_decoder(name: str, key: str = "align.decoding_models", source: str = "config"):
    """The registered model ``name`` if it can run in an aligned space, else an error.

    A model runs there when it is a decoding model that reads one feature store
    (``inputs="features"``) and is fitted on one subject (no cross-subject ``pretrain``):
    its "voxels" are the shared-space components.

    Raises
    ------
    BrainpipeInputError
        Naming ``key`` and ``name``, listing the models that can.
    """
    from brainpipe.models import MODELS

    usable = sorted(
        n
        for n, s in MODELS.items()
        if s.kind == "decoding" and s.inputs == "features" and not s.cross_subject
    )
    if name not in usable:
        why = "not a registered model" if name not in MODELS else "not a one-subject decoder"
        raise BrainpipeInputError(
            source, key, f"{name!r} is {why}; decoders that run in an aligned space: {usable}"
        )
    return MODELS[name]


def check_decoding_models(config: Mapping[str, Any], source: str = "config") -> list[str]:
    """``align.decoding_models`` of ``config`` (default :data:`DEFAULT_MODELS`), each
    checked by :func:`aligned_decoder` (the error names ``align.decoding_models.<n>``)."""
    names = (config.get("align") or {}).get("decoding_models")
    names = list(DEFAULT_MODELS if names is None else names)
    for n, name in enumerate(names):
        aligned_decoder(name, f"align.decoding_models.{n}", source)
    return names


def _test_rows(store, subjects: Sequence[str]) -> dict[str, tuple[list[str], np.ndarray]]:
    """Per subject with at least 3 test stimuli: its sorted test stimuli and its
    shared-space responses to each, averaged over repeats (float32)."""
    out = {}
    for subject in subjects:
        valid, stim, split = shared_space_trials(store, subject)
        stim, split = stim[valid], split[valid]
        test = sorted(set(stim[split == "test"]))
        if len(test) < 3:
            continue
        responses = store["responses"].sel(subject=subject).values[valid]
        out[subject] = (test, test_means(stim, split, responses, test).astype(np.float32))
    return out


def aligned_job_data(
    store,
    source: str,
    features,
    features_path: str,
    test_stimuli: np.ndarray,
    test_responses: np.ndarray,
) -> JobData:
    """The :class:`JobData` a registered decoder is fitted on in an aligned space.

    Training rows: ``source``'s shared-space responses of its training trials
    (:func:`~brainpipe.align.encoding.training_trials`) and those trials' features; test
    rows: ``test_responses`` (any subjects' averaged shared-space test responses, stacked;
    ``test_stimuli`` names each row, so a stimulus may repeat), only ever predicted.
    Missing values are filled with the source's training means
    (:func:`~brainpipe.models.data.fill_missing`), as a training job fills its betas.
    """
    train, stimuli = training_trials(store, source)
    betas_train = np.asarray(store["responses"].sel(subject=source).values[train], np.float32)
    betas_test = np.array(test_responses, dtype=np.float32)
    filled = fill_missing(betas_train, betas_test)
    sessions = (
        store["session"].sel(subject=source).values.astype(str)[train]
        if "session" in store.coords
        else np.full(len(stimuli), "", dtype=object)
    )
    n_components = int(store.sizes["component"])
    return JobData(
        subject=source,
        roi=str(store.attrs["method"]),  # every align store names its method
        betas_train=betas_train,
        stimuli_train=stimuli,
        sessions_train=sessions,
        features_train=[features_for(features, stimuli, features_path)],
        test_stimuli=np.asarray(test_stimuli).astype(str),
        betas_test=betas_test,
        repeats_test=np.ones(len(betas_test), dtype=np.int64),
        features_test=[features_for(features, np.asarray(test_stimuli), features_path)],
        voxel_ijk=np.full((n_components, 3), -1, dtype=np.int32),
        feature_names=[str(features.attrs.get("feature_model", Path(features_path).stem))],
        n_voxels_filled=filled,
    )


def aligned_decoding_scores(
    align_path: str | Path,
    features_path: str | Path,
    models: Mapping[str, Mapping[str, Any]] | None = None,
) -> pd.DataFrame:
    """Within- and cross-subject identification by registered decoders in one aligned space.

    Parameters
    ----------
    align_path : path
        ``align/{method}.zarr`` (:mod:`brainpipe.align.store`): every trial's shared-space
        responses, split and stimulus per subject.
    features_path : path
        ``features/{name}.zarr`` (``features(stimulus, feature)``, PCA fitted on training
        stimuli): the decoding targets.
    models : mapping of str -> dict, optional
        Registered decoder names (:func:`aligned_decoder`) and their parameters
        (:func:`brainpipe.models.model_params`, so ``model_params.<name>`` applies here
        too); default :data:`DEFAULT_MODELS` with their registry defaults.

    Returns
    -------
    DataFrame
        :data:`COLUMNS`; one row per model x source x target (``relation`` ``within`` or
        ``cross``). Targets with fewer than 3 test stimuli are skipped. ``fit_info``: the
        fit's :attr:`~brainpipe.models.registry.FitResult.info` (``key=value; ...``).
    """
    from brainpipe.models import model_params

    if models is None:
        models = {name: model_params(name) for name in DEFAULT_MODELS}
    store = open_zarr(align_path)
    features = open_zarr(features_path)
    method = str(store.attrs["method"])
    name = str(features.attrs.get("feature_model", Path(features_path).stem.replace(".zarr", "")))
    subjects = [str(s) for s in store.attrs["subjects"]]
    targets = _test_rows(store, subjects)
    if not targets:
        return pd.DataFrame(columns=COLUMNS)
    stacked = np.concatenate([np.asarray(t) for t, _ in targets.values()])
    responses = np.concatenate([z for _, z in targets.values()])
    bounds = np.cumsum([0] + [len(t) for t, _ in targets.values()])
    true = features_for(features, stacked, str(features_path), dtype=np.float64)
    rows = []
    for model, params in models.items():
        spec = aligned_decoder(model)
        for source in subjects:
            data = aligned_job_data(store, source, features, str(features_path), stacked, responses)
            n_train = data.n_train
            # Scored in the source's standardised units (training statistics only).
            y_mean, y_sd = standardiser(np.asarray(data.features_train[0], np.float64))
            result = spec.fit(data, dict(params))
            decoded = (np.asarray(result.predicted, np.float64) - y_mean) / y_sd
            info = "; ".join(f"{k}={v}" for k, v in sorted(result.info.items()))
            for k, target in enumerate(targets):
                part = slice(bounds[k], bounds[k + 1])
                n_test = bounds[k + 1] - bounds[k]
                scores = retrieval_per_query(
                    similarity_matrix(decoded[part], (true[part] - y_mean) / y_sd), ks=(1,)
                )
                rows.append(
                    {
                        "method": method,
                        "model": model,
                        "features": name,
                        "source": source,
                        "target": target,
                        "relation": "within" if source == target else "cross",
                        "n_train_trials": n_train,
                        "n_test_stimuli": int(n_test),
                        "n_components": int(store.sizes["component"]),
                        "top1": float(scores["top1"].mean()),
                        "top1_chance": 1.0 / n_test,
                        "two_way": float(scores["two_way"].mean()),
                        "two_way_chance": 0.5,
                        "fit_info": info,
                    }
                )
    return pd.DataFrame(rows, columns=COLUMNS)


def write_aligned_decoding_scores(
    align_paths: Sequence[str | Path],
    features_paths: Sequence[str | Path],
    out_tsv: str | Path,
    models: Mapping[str, Mapping[str, Any]] | None = None,
) -> pd.DataFrame:
    """:func:`aligned_decoding_scores` of every method x feature model, one table (atomic)."""
    table = pd.concat(
        [aligned_decoding_scores(a, f, models) for a in align_paths for f in features_paths]
    )
    groups = table.groupby(["method", "model", "features", "relation"])
    for (method, model, feats, relation), rows in groups:
        log.info("%s / %s / %s, %s-subject: top-1 %.3f (chance %.3f), 2-way %.3f over %d pairs",
                 method, model, feats, relation, rows["top1"].mean(),
                 rows["top1_chance"].mean(), rows["two_way"].mean(), len(rows))  # fmt: skip
    write_text_atomic(table.to_csv(sep="\t", index=False, float_format="%.6g"), out_tsv)
    return table
