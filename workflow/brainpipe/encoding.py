"""Train and evaluate encoding models (features -> voxels) for one subject × ROI × model.

Training sees only trials whose stimulus is in the train split; the test
split is used once, by :func:`evaluate_encoding_model`, on responses averaged
over repeats.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from safetensors.numpy import save_file

from brainpipe.errors import BrainpipeInputError
from brainpipe.metrics import nc_normalised_score, noise_ceiling, pearson_r, r2_score_per_target
from brainpipe.ridge import RidgeCVEncoder
from brainpipe.splits import read_splits, trial_split
from brainpipe.storage import (
    atomic_path,
    open_zarr,
    provenance_attrs,
    write_text_atomic,
    write_zarr,
)


def roi_betas(betas_path: str | Path, roi: str) -> xr.Dataset:
    """The betas store restricted to the voxels of ``roi`` (lazy)."""
    store = open_zarr(betas_path)
    name = f"roi_{roi}"
    if name not in store.coords:
        known = sorted(c[4:] for c in store.coords if c.startswith("roi_"))
        raise BrainpipeInputError(betas_path, name, f"ROI {roi!r} not in the store (has {known})")
    selected = store.isel(voxel=np.flatnonzero(store[name].values))
    if selected.sizes["voxel"] == 0:
        raise BrainpipeInputError(betas_path, name, f"ROI {roi!r} has no voxels")
    return selected


def _features_for(features: xr.Dataset, stimuli: np.ndarray, source: str) -> np.ndarray:
    known = pd.Index(features["stimulus"].values.astype(str))
    idx = known.get_indexer(stimuli.astype(str))
    if (idx < 0).any():
        raise BrainpipeInputError(
            source, "stimulus", f"stimulus {stimuli[idx < 0][0]!r} has no features"
        )
    return features["features"].values[idx]


def train_encoding_model(
    betas_path: str | Path,
    features_path: str | Path,
    splits_path: str | Path,
    roi: str,
    weights_path: str | Path,
    predictions_path: str | Path,
    alphas: list[float],
    n_folds: int = 5,
    config: dict[str, Any] | None = None,
) -> RidgeCVEncoder:
    """Fit ridge (penalty per voxel by grouped CV) on train trials; predict test stimuli.

    Writes the weights (``coef``, ``intercept``, ``alpha``) as safetensors and
    the predictions ``predicted(stimulus, voxel)`` for every test stimulus the
    subject saw as a Zarr store.
    """
    betas = roi_betas(betas_path, roi)
    features = open_zarr(features_path)
    splits = read_splits(splits_path)
    trial_stimuli = betas["stimulus"].values.astype(str)
    split = trial_split(trial_stimuli, splits, str(betas_path)).to_numpy()
    train = split == "train"
    if train.sum() < n_folds:
        raise BrainpipeInputError(
            splits_path, "split", f"only {train.sum()} training trials for {n_folds} CV folds"
        )
    X_train = _features_for(features, trial_stimuli[train], str(features_path))
    Y_train = betas["betas"].values[train]
    model = RidgeCVEncoder(alphas=np.asarray(alphas, dtype=float), n_folds=n_folds)
    model.fit(X_train, Y_train, groups=trial_stimuli[train])

    test_stimuli = np.array(sorted(set(trial_stimuli[~train])))
    predicted = model.predict(_features_for(features, test_stimuli, str(features_path)))
    metadata = {
        "roi": roi,
        "feature_model": str(features.attrs.get("feature_model", "")),
        "n_train_trials": str(int(train.sum())),
        **provenance_attrs(config),
    }
    with atomic_path(weights_path) as tmp:
        save_file(
            {
                "coef": np.ascontiguousarray(model.coef_, dtype=np.float32),
                "intercept": np.ascontiguousarray(model.intercept_, dtype=np.float32),
                "alpha": np.ascontiguousarray(model.alpha_, dtype=np.float32),
                "voxel_ijk": np.stack([betas[c].values for c in "ijk"], axis=1).astype(np.int32),
            },
            str(tmp),
            metadata=metadata,
        )
    predictions = xr.Dataset(
        {"predicted": (("stimulus", "voxel"), predicted.astype(np.float32))},
        coords={"stimulus": test_stimuli, **{c: ("voxel", betas[c].values) for c in "ijk"}},
        attrs={**metadata, "units": "percent signal change", "stage": "train"},
    )
    write_zarr(predictions, predictions_path)
    return model


def average_test_responses(
    betas: xr.Dataset, test_stimuli: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Observed responses to each test stimulus averaged over its repeats, and the repeat counts."""
    trial_stimuli = pd.Index(betas["stimulus"].values.astype(str))
    values = betas["betas"].values
    means, counts = [], []
    for stim in test_stimuli:
        sel = trial_stimuli == stim
        means.append(values[sel].mean(axis=0))
        counts.append(int(sel.sum()))
    return np.stack(means), np.asarray(counts)


def evaluate_encoding_model(
    betas_path: str | Path,
    predictions_path: str | Path,
    roi: str,
    metrics_path: str | Path,
    scores_path: str | Path,
    labels: dict[str, str],
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score test predictions per voxel: Pearson r, R² and noise-ceiling-normalised score.

    The noise ceiling accounts for how many repeats each test response
    averages. Writes per-voxel scores (Zarr) and a ``metrics.json`` summary.
    """
    betas = roi_betas(betas_path, roi)
    predictions = open_zarr(predictions_path)
    test_stimuli = predictions["stimulus"].values.astype(str)
    observed, repeats = average_test_responses(betas, test_stimuli)
    predicted = predictions["predicted"].values
    r = pearson_r(observed, predicted)
    r2 = r2_score_per_target(observed, predicted)
    nc = noise_ceiling(betas["ncsnr"].values, repeats)
    score = nc_normalised_score(r, nc)
    scores = xr.Dataset(
        {
            "r": ("voxel", r.astype(np.float32)),
            "r2": ("voxel", r2.astype(np.float32)),
            "noise_ceiling": ("voxel", np.asarray(nc, dtype=np.float32)),
            "score": ("voxel", np.asarray(score, dtype=np.float32)),
        },
        coords={c: ("voxel", betas[c].values) for c in "ijk"},
        attrs={**labels, "roi": roi, "stage": "evaluate", **provenance_attrs(config)},
    )
    write_zarr(scores, scores_path)
    metrics = {
        **labels,
        "roi": roi,
        "n_voxels": int(r.size),
        "n_test_stimuli": int(len(test_stimuli)),
        "mean_repeats": float(repeats.mean()),
        "mean_r": float(np.nanmean(r)),
        "median_r": float(np.nanmedian(r)),
        "mean_r2_percent": float(np.nanmean(np.clip(r, 0, None) ** 2) * 100),
        "mean_noise_ceiling": float(np.nanmean(nc)),
        "mean_score": float(np.nanmean(score)),
        "median_score": float(np.nanmedian(score)),
    }
    write_text_atomic(json.dumps(metrics, indent=2), metrics_path)
    return metrics


def collect_summary(metrics_paths: list[str | Path], out_tsv: str | Path) -> pd.DataFrame:
    """Gather every job's ``metrics.json`` into one tidy ``summary.tsv``."""
    rows = [json.loads(Path(p).read_text()) for p in metrics_paths]
    table = pd.DataFrame(rows)
    order = ["dataset", "subject", "roi", "model", "features"]
    table = table[[c for c in order if c in table] + [c for c in table if c not in order]]
    table = table.sort_values([c for c in order if c in table]).reset_index(drop=True)
    write_text_atomic(table.to_csv(sep="\t", index=False, float_format="%.6g"), out_tsv)
    return table
