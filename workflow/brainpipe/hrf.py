"""Haemodynamic response functions: the canonical one and a parametric library.

All HRFs here are double-gamma functions sampled on a fine time grid and
normalised to a peak of 1, so that a regressor built from them is in the
units of the BOLD signal (a beta of 1 is a peak response of 1 % signal change
when the data are in percent signal change).
"""

from __future__ import annotations

import numpy as np

#: Length of every HRF kernel, in seconds.
HRF_LENGTH_S = 32.0


def double_gamma_hrf(
    dt: float,
    peak_delay: float = 6.0,
    undershoot_delay: float = 16.0,
    dispersion: float = 1.0,
    undershoot_ratio: float = 1.0 / 6.0,
    length: float = HRF_LENGTH_S,
) -> np.ndarray:
    """Double-gamma HRF sampled every ``dt`` seconds, peak-normalised.

    Parameters
    ----------
    dt : float
        Sampling interval in seconds.
    peak_delay, undershoot_delay : float
        Shape parameters (in seconds, for ``dispersion=1``) of the response
        and undershoot gamma densities; SPM's canonical values are 6 and 16.
    dispersion : float
        Scale of both gamma densities.
    undershoot_ratio : float
        Amplitude of the undershoot relative to the response.
    length : float
        Kernel length in seconds.

    Returns
    -------
    numpy.ndarray, shape (round(length / dt),)
        The kernel, with maximum 1.
    """
    t = np.arange(0.0, length, dt)
    from scipy.stats import gamma  # here: scipy.stats costs ~0.5 s to import, and NSD ingest
    # imports the betas package without fitting anything

    h = gamma.pdf(t, peak_delay / dispersion, scale=dispersion) - undershoot_ratio * gamma.pdf(
        t, undershoot_delay / dispersion, scale=dispersion
    )
    return h / h.max()


def canonical_hrf(dt: float) -> np.ndarray:
    """SPM's canonical double-gamma HRF sampled every ``dt`` s, peak-normalised."""
    return double_gamma_hrf(dt)


def hrf_library_parameters(n: int = 20) -> list[dict[str, float]]:
    """Parameters of a library of ``n`` realistic HRFs, ordered by time to peak.

    Time-to-peak spans roughly 4 to 7.5 s and the undershoot varies with it, as
    across cortex in human fMRI.
    """
    peaks = np.linspace(4.5, 8.0, n)
    return [
        {
            "peak_delay": float(p),
            "undershoot_delay": float(p + 10.0 + 2.0 * (i % 3)),
            "dispersion": 1.0,
            "undershoot_ratio": float(1.0 / (4.0 + 4.0 * ((i * 7) % n) / n)),
        }
        for i, p in enumerate(peaks)
    ]


def hrf_library(dt: float, n: int = 20) -> np.ndarray:
    """Kernels of :func:`hrf_library_parameters`, shape ``(n, n_samples)``."""
    return np.stack([double_gamma_hrf(dt, **p) for p in hrf_library_parameters(n)])
