"""The arrays one training job sees: train trials and test stimuli of one subject × ROI.

Training rows are single trials whose stimulus is in the train split; the test split is
only ever read as responses averaged over repeats (and only by prediction / evaluation),
so nothing fitted sees a test stimulus.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from brainpipe.errors import BrainpipeInputError
from brainpipe.splits import read_splits, trial_split
from brainpipe.storage import open_zarr

#: ROI name meaning "the union of every ROI mask in the betas store".
UNION_ROI = "all"


def roi_betas(betas_path: str | Path, roi: str) -> xr.Dataset:
    """The betas store restricted to the voxels of ``roi`` (lazy).

    ``roi="all"`` selects the union of every ``roi_<NAME>`` mask of the store.
    """
    store = open_zarr(betas_path)
    masks = sorted(c for c in store.coords if c.startswith("roi_"))
    if roi == UNION_ROI:
        if not masks:
            raise BrainpipeInputError(betas_path, "roi_*", "the store has no ROI masks")
        keep = np.logical_or.reduce([store[c].values.astype(bool) for c in masks])
    else:
        name = f"roi_{roi}"
        if name not in store.coords:
            known = [c[4:] for c in masks]
            raise BrainpipeInputError(
                betas_path, name, f"ROI {roi!r} not in the store (has {known} and {UNION_ROI!r})"
            )
        keep = store[name].values.astype(bool)
    selected = store.isel(voxel=np.flatnonzero(keep))
    if selected.sizes["voxel"] == 0:
        raise BrainpipeInputError(betas_path, f"roi_{roi}", f"ROI {roi!r} has no voxels")
    return selected


def features_for(features: xr.Dataset, stimuli: np.ndarray, source: str) -> np.ndarray:
    """Rows of ``features["features"]`` for ``stimuli`` (any trailing dims kept)."""
    known = pd.Index(features["stimulus"].values.astype(str))
    idx = known.get_indexer(np.asarray(stimuli).astype(str))
    if (idx < 0).any():
        raise BrainpipeInputError(
            source, "stimulus", f"stimulus {np.asarray(stimuli)[idx < 0][0]!r} has no features"
        )
    return np.asarray(features["features"].values[idx], dtype=np.float32)


def average_test_responses(
    betas: xr.Dataset, test_stimuli: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Responses to each test stimulus averaged over its repeats, and the repeat counts.

    Returns
    -------
    means : ndarray of float32, shape (n_test, n_voxels)
    counts : ndarray of int, shape (n_test,)
    """
    trial_stimuli = betas["stimulus"].values.astype(str)
    values = np.asarray(betas["betas"].values, dtype=np.float32)
    codes = pd.Index(test_stimuli).get_indexer(trial_stimuli)
    sel = codes >= 0
    counts = np.bincount(codes[sel], minlength=len(test_stimuli))
    sums = np.zeros((len(test_stimuli), values.shape[1]), dtype=np.float64)
    np.add.at(sums, codes[sel], values[sel])
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32), counts


@dataclass
class JobData:
    """Train and test arrays of one subject × ROI.

    Attributes
    ----------
    subject, roi : str
    betas_train : ndarray of float32, shape (n_train_trials, n_voxels)
        Single-trial betas (% signal change) of training trials.
    stimuli_train : ndarray of str, shape (n_train_trials,)
    sessions_train : ndarray of str, shape (n_train_trials,)
    features_train : list of ndarray, each (n_train_trials, ...)
        One array per feature store read (PCA features ``(n, n_features)`` or spatial
        features ``(n, n_tokens, n_channels)``).
    test_stimuli : ndarray of str, shape (n_test,)
        Test-split stimuli the subject saw, sorted.
    betas_test : ndarray of float32, shape (n_test, n_voxels)
        Test responses averaged over repeats.
    repeats_test : ndarray of int, shape (n_test,)
    features_test : list of ndarray, each (n_test, ...)
    voxel_ijk : ndarray of int32, shape (n_voxels, 3)
    feature_names : list of str
    """

    subject: str
    roi: str
    betas_train: np.ndarray
    stimuli_train: np.ndarray
    sessions_train: np.ndarray
    features_train: list[np.ndarray]
    test_stimuli: np.ndarray
    betas_test: np.ndarray
    repeats_test: np.ndarray
    features_test: list[np.ndarray]
    voxel_ijk: np.ndarray
    feature_names: list[str]

    @property
    def n_voxels(self) -> int:
        return int(self.betas_train.shape[1])

    def restrict_sessions(self, sessions: list[str]) -> JobData:
        """The same job with training trials restricted to ``sessions`` (test unchanged)."""
        keep = np.isin(self.sessions_train, [str(s) for s in sessions])
        if not keep.any():
            raise BrainpipeInputError(
                f"betas of sub-{self.subject}",
                "session",
                f"no training trials in sessions {sessions}"
                f" (has {sorted(set(self.sessions_train))})",
            )
        return JobData(
            subject=self.subject,
            roi=self.roi,
            betas_train=self.betas_train[keep],
            stimuli_train=self.stimuli_train[keep],
            sessions_train=self.sessions_train[keep],
            features_train=[f[keep] for f in self.features_train],
            test_stimuli=self.test_stimuli,
            betas_test=self.betas_test,
            repeats_test=self.repeats_test,
            features_test=self.features_test,
            voxel_ijk=self.voxel_ijk,
            feature_names=self.feature_names,
        )


def load_job_data(
    betas_path: str | Path,
    feature_paths: list[str | Path],
    splits_path: str | Path,
    roi: str,
    subject: str = "",
    min_train: int = 2,
) -> JobData:
    """Load the train trials and averaged test responses of one subject × ROI.

    Parameters
    ----------
    betas_path : path
        ``betas.zarr`` of the subject.
    feature_paths : list of path
        Feature stores (``features(stimulus, ...)``) to read, in order.
    splits_path : path
        ``splits.tsv``.
    roi : str
        ROI name (``"all"``: union of the store's ROIs).
    subject : str
        Label stored in the result.
    min_train : int
        Fewest training trials accepted.

    Raises
    ------
    BrainpipeInputError
        Unknown ROI, stimulus without features or split, or too few training trials.
    """
    betas = roi_betas(betas_path, roi)
    splits = read_splits(splits_path)
    trial_stimuli = betas["stimulus"].values.astype(str)
    split = trial_split(trial_stimuli, splits, str(betas_path)).to_numpy()
    train = split == "train"
    if train.sum() < min_train:
        raise BrainpipeInputError(
            splits_path, "split", f"only {int(train.sum())} training trials (need {min_train})"
        )
    test_stimuli = np.array(sorted(set(trial_stimuli[~train])))
    if test_stimuli.size < 2:
        raise BrainpipeInputError(
            splits_path, "split", "fewer than 2 test stimuli for this subject"
        )
    stores = [open_zarr(p) for p in feature_paths]
    values = np.asarray(betas["betas"].values, dtype=np.float32)
    betas_test, repeats = average_test_responses(betas, test_stimuli)
    return JobData(
        subject=subject or str(betas.attrs.get("subject", "")),
        roi=roi,
        betas_train=values[train],
        stimuli_train=trial_stimuli[train],
        sessions_train=betas["session"].values.astype(str)[train],
        features_train=[
            features_for(s, trial_stimuli[train], str(p))
            for s, p in zip(stores, feature_paths, strict=True)
        ],
        test_stimuli=test_stimuli,
        betas_test=betas_test,
        repeats_test=repeats,
        features_test=[
            features_for(s, test_stimuli, str(p))
            for s, p in zip(stores, feature_paths, strict=True)
        ],
        voxel_ijk=np.stack([betas[c].values for c in "ijk"], axis=1).astype(np.int32),
        feature_names=[
            str(s.attrs.get("feature_model", Path(p).stem))
            for s, p in zip(stores, feature_paths, strict=True)
        ],
    )


def standardiser(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and sd (sd 0 -> 1) of training rows: fitted on train data only."""
    mean = X.mean(axis=0)
    sd = X.std(axis=0)
    return mean.astype(np.float32), np.where(sd > 1e-8, sd, 1.0).astype(np.float32)
