"""Reconstruction metrics as the papers report them (Brain-Diffuser, MindEye).

- PixCorr: Pearson correlation of the flattened pixels of a reconstruction and its
  stimulus, averaged over test images;
- SSIM: scikit-image's ``structural_similarity`` on grayscale images with Gaussian
  weights (sigma 1.5, no sample covariance), as MindEye's evaluation computes it;
- two-way identification in a feature space: for each test image, the fraction of other
  test images ``j`` for which the reconstruction correlates more with its own stimulus's
  features than with ``j``'s (chance 0.5).
"""

from __future__ import annotations

import numpy as np


def _rows_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Correlation of every row of ``a`` with every row of ``b``: (n_a, n_b)."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def pixcorr_matrix(recon: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Pixel correlation of each reconstruction (rows) with each stimulus (columns)."""
    flat = lambda x: np.asarray(x, np.float64).reshape(len(x), -1)  # noqa: E731
    return _rows_corr(flat(recon), flat(true))


def two_way_identification(recon_features: np.ndarray, true_features: np.ndarray) -> float:
    """MindEye's two-way identification: mean over images of the fraction of other images
    whose features correlate less with the reconstruction than its own stimulus's do."""
    corr = _rows_corr(
        np.asarray(recon_features, np.float64).reshape(len(recon_features), -1),
        np.asarray(true_features, np.float64).reshape(len(true_features), -1),
    )
    own = np.diag(corr)[:, None]
    n = corr.shape[0]
    wins = (corr < own).sum(axis=1)  # the diagonal never counts (corr == own)
    return float(np.mean(wins / (n - 1)))


def ssim(recon: np.ndarray, true: np.ndarray) -> np.ndarray:
    """SSIM of each reconstruction with its stimulus (grayscale, Gaussian weights)."""
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity

    return np.array(
        [
            structural_similarity(
                rgb2gray(r),
                rgb2gray(t),
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
            )
            for r, t in zip(recon, true, strict=True)
        ]
    )


def reconstruction_metrics(recon: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """PixCorr, SSIM and two-way identification in pixel space of uint8 images (n, h, w, 3).

    Returns ``pixcorr`` (own stimulus), ``pixcorr_other`` (mean over the other test
    stimuli: the baseline a reconstruction must beat), ``ssim``, ``two_way_pixel`` and
    its ``two_way_chance`` 0.5, and ``n_test``.
    """
    pix = pixcorr_matrix(recon, true)
    n = len(pix)
    off = ~np.eye(n, dtype=bool)
    return {
        "pixcorr": float(np.mean(np.diag(pix))),
        "pixcorr_other": float(pix[off].mean()),
        "ssim": float(np.mean(ssim(recon, true))),
        "two_way_pixel": two_way_identification(recon, true),
        "two_way_chance": 0.5,
        "n_test": int(n),
    }
