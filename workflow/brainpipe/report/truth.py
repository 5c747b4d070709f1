"""For the synthetic dataset: this run's estimates against the generator's ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from brainpipe.storage import open_zarr


def _mean(values, voxels: np.ndarray) -> float:
    return float(np.nanmean(np.asarray(values)[voxels]))


def truth_table(
    betas_paths: dict[str, str | Path], data_dir: str | Path, rois: list[str]
) -> pd.DataFrame:
    """Per subject × ROI: betas vs true amplitudes, estimated vs true noise ceiling.

    Parameters
    ----------
    betas_paths : dict of subject -> path
        The run's betas stores.
    data_dir : path
        The synthetic dataset root (its ``derivatives/groundtruth``).
    rois : list of str
        ROIs to report (those the stores carry as ``roi_<name>``).

    Returns
    -------
    DataFrame
        ``subject, roi, n_voxels, betas_vs_truth_r`` (correlation over trials and voxels of
        the estimated single-trial betas with the true amplitudes), ``noise_ceiling_1trial``
        (this run's single-trial noise ceiling, % variance, mean over the ROI) and
        ``true_noise_ceiling_1trial`` (the generator's).
    """
    from brainpipe.datasets.synthetic import load_ground_truth

    rows = []
    for subject, path in betas_paths.items():
        betas = open_zarr(path)
        truth = load_ground_truth(data_dir, subject)
        same = np.array_equal(
            betas["stimulus"].values.astype(str), truth["stimulus"].values.astype(str)
        )
        for roi in rois:
            if f"roi_{roi}" not in betas.coords:
                continue
            voxels = np.flatnonzero(betas[f"roi_{roi}"].values)
            estimated = betas["betas"].values[:, voxels]
            amplitude = truth["amplitude"].values[:, voxels]
            r = np.corrcoef(estimated.ravel(), amplitude.ravel())[0, 1] if same else np.nan
            rows.append(
                {
                    "subject": subject,
                    "roi": roi,
                    "n_voxels": len(voxels),
                    "betas_vs_truth_r": float(r),
                    "noise_ceiling_1trial": _mean(betas["nc_1trial"], voxels),
                    "true_noise_ceiling_1trial": _mean(truth["noise_ceiling"], voxels),
                }
            )
    return pd.DataFrame(rows)
