"""A synthetic movie world: subjects watching one movie, with known shared latents.

Naturalistic datasets (Sherlock, Raider) align subjects on their time series. Here every
subject's voxel time series is a subject-specific mixture of the same smooth latent time
courses plus noise, so the shared response's subspace and its time course are known::

    latents[t, c]   smooth in time (white noise filtered by a Gaussian of sd
                    ``smoothness_tr`` samples), each component z-scored
    data_s[t, v]    = latents[t] @ mixing_s[:, v] + noise_sd * AR(1)(ar1)
    mixing_s        (n_components, n_voxels_s), orthonormal rows times ``signal_sd``:
                    the shared response model's ``W_sᵀ`` up to scale

Subjects have different voxel counts. The generator is separate from the image world of
:mod:`brainpipe.datasets.synthetic` (whose outputs it leaves unchanged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import lfilter


@dataclass(frozen=True)
class MovieParams:
    """Parameters of the synthetic movie world (amplitudes in arbitrary units)."""

    seed: int = 0
    n_subjects: int = 5
    n_timepoints: int = 600
    n_components: int = 10
    min_voxels: int = 150
    max_voxels: int = 250
    smoothness_tr: float = 2.0
    signal_sd: float = 1.0
    noise_sd: float = 4.0
    ar1: float = 0.3


@dataclass
class MovieWorld:
    """The generated data and its truth.

    Attributes
    ----------
    data : list of ndarray, each (n_timepoints, n_voxels_s)
    latents : ndarray, shape (n_timepoints, n_components)
    mixing : list of ndarray, each (n_components, n_voxels_s)
    """

    data: list[np.ndarray]
    latents: np.ndarray
    mixing: list[np.ndarray]


def generate_movie(params: MovieParams) -> MovieWorld:
    """Generate the movie world of ``params`` (deterministic in ``params.seed``)."""
    rng = np.random.default_rng([params.seed, 19])
    T, k = params.n_timepoints, params.n_components
    latents = gaussian_filter1d(rng.standard_normal((T, k)), params.smoothness_tr, axis=0)
    latents = (latents - latents.mean(0)) / latents.std(0)
    data, mixing = [], []
    for _ in range(params.n_subjects):
        n_vox = int(rng.integers(params.min_voxels, params.max_voxels + 1))
        q, _ = np.linalg.qr(rng.standard_normal((n_vox, k)))
        mix = params.signal_sd * math.sqrt(n_vox / k) * q.T  # per-voxel signal sd ~ signal_sd
        innov = rng.standard_normal((T, n_vox))
        innov[1:] *= math.sqrt(1 - params.ar1**2)
        noise = params.noise_sd * lfilter([1.0], [1.0, -params.ar1], innov, axis=0)
        data.append((latents @ mix + noise).astype(np.float32))
        mixing.append(mix.astype(np.float32))
    return MovieWorld(data=data, latents=latents.astype(np.float32), mixing=mixing)
