"""Trial design matrices built on a fine time grid, so off-TR onsets are exact."""

from __future__ import annotations

import numpy as np

#: Resolution of the fine grid the design is built on, in seconds.
FINE_DT = 0.1


def trial_regressors(
    onsets: np.ndarray,
    durations: np.ndarray,
    n_scans: int,
    tr: float,
    kernel: np.ndarray,
    dt: float = FINE_DT,
) -> np.ndarray:
    """One regressor per trial: its boxcar convolved with an HRF, sampled at each scan.

    The boxcar is laid out on a grid of ``dt`` seconds, so an onset between two
    acquisitions is placed where it happened, not rounded to the TR. Each
    regressor is scaled so that its peak on the fine grid is 1: a beta is then
    the peak response to that trial, in the units of the data.

    Parameters
    ----------
    onsets, durations : numpy.ndarray, shape (n_trials,)
        Trial onsets and durations in seconds from the first acquisition.
    n_scans : int
        Number of acquisitions in the run.
    tr : float
        Repetition time in seconds; scan ``k`` is sampled at ``k * tr``.
    kernel : numpy.ndarray, shape (n_samples,)
        HRF sampled every ``dt`` seconds (see :mod:`brainpipe.hrf`).
    dt : float
        Fine grid resolution in seconds.

    Returns
    -------
    numpy.ndarray, shape (n_scans, n_trials), float64
    """
    onsets = np.asarray(onsets, dtype=float)
    durations = np.asarray(durations, dtype=float)
    n_fine = int(np.ceil(n_scans * tr / dt)) + len(kernel)
    grid = np.arange(n_fine) * dt
    # Fraction of each fine bin covered by the trial, so sub-bin onsets still count.
    starts = np.clip((onsets[:, None] - grid[None, :]) / dt, 0.0, 1.0)
    ends = np.clip((onsets[:, None] + durations[:, None] - grid[None, :]) / dt, 0.0, 1.0)
    boxcars = ends - starts  # (n_trials, n_fine)
    conv = np.stack([np.convolve(b, kernel)[:n_fine] for b in boxcars])
    peaks = conv.max(axis=1, keepdims=True)
    peaks[peaks == 0] = 1.0
    conv /= peaks
    scan_times = np.arange(n_scans) * tr
    return np.stack([np.interp(scan_times, grid, c) for c in conv], axis=1)
