"""Classic low-level image features: quadrature-pair Gabor energy on a coarse grid.

Each image is converted to grayscale, resized to ``image_size`` × ``image_size``, its mean
removed, and convolved (by FFT, batched over images) with a bank of complex Gabor filters
(the real and imaginary parts form a quadrature pair). The energy
``sqrt(even² + odd²)`` is averaged over the cells of a ``grid`` × ``grid`` spatial grid and
compressed with ``log(1 + x)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.fft
from PIL import Image

from brainpipe.errors import BrainpipeInputError
from brainpipe.features import check_columns, register_feature_model, table_source

DEFAULT_IMAGE_SIZE = 64
DEFAULT_N_ORIENTATIONS = 4
DEFAULT_CYCLES_PER_IMAGE = (4.0, 8.0, 16.0)
DEFAULT_GRID = 8


def gabor_filter_bank(
    shape: tuple[int, int],
    frequencies: Sequence[float],
    orientations: Sequence[float],
    sigma_per_wavelength: float = 0.56,
) -> np.ndarray:
    """Complex, zero-mean Gabor kernels laid out for FFT convolution.

    Parameters
    ----------
    shape : (int, int)
        Grid (height, width) of the (padded) images the kernels will be applied to.
        Kernels are centred on pixel (0, 0) with wrap-around, as ``fft2`` expects.
    frequencies : sequence of float
        Carrier spatial frequencies in cycles per pixel.
    orientations : sequence of float
        Carrier directions in radians. ``0`` means the carrier varies along x, i.e. the
        filter prefers vertical bars; ``pi / 2`` prefers horizontal bars.
    sigma_per_wavelength : float
        Gaussian envelope SD in wavelengths (0.56 ≈ one-octave bandwidth).

    Returns
    -------
    kernels : ndarray of complex128, shape (n_frequencies, n_orientations, height, width)
        Real part = even filter, imaginary part = odd filter; each has zero DC and an
        envelope normalised to unit sum.
    """
    h, w = shape
    y = np.fft.fftfreq(h, d=1.0 / h)[:, None]  # signed pixel offsets 0..h/2-1, -h/2..-1
    x = np.fft.fftfreq(w, d=1.0 / w)[None, :]
    kernels = np.empty((len(frequencies), len(orientations), h, w), dtype=np.complex128)
    for i, f in enumerate(frequencies):
        sigma = sigma_per_wavelength / f
        env = np.exp(-(x**2 + y**2) / (2.0 * sigma**2))
        env /= env.sum()
        for j, theta in enumerate(orientations):
            carrier = np.exp(2j * np.pi * f * (x * np.cos(theta) + y * np.sin(theta)))
            # Morlet-style correction: remove the DC response of the (even) filter.
            kappa = (env * carrier).sum() / env.sum()
            kernels[i, j] = env * (carrier - kappa)
    return kernels


def gabor_energy(
    images: np.ndarray,
    n_orientations: int = DEFAULT_N_ORIENTATIONS,
    cycles_per_image: Sequence[float] = DEFAULT_CYCLES_PER_IMAGE,
    grid: int = DEFAULT_GRID,
    batch_size: int = 32,
) -> np.ndarray:
    """Gabor energy of grayscale images pooled on a coarse spatial grid.

    Parameters
    ----------
    images : ndarray, shape (n_images, height, width)
        Grayscale images (any real dtype; typically in [0, 1]). ``height`` and ``width``
        must be divisible by ``grid``.
    n_orientations : int
        Number of orientations, evenly spaced in [0, pi): orientation ``k`` is
        ``k * pi / n_orientations`` (0 prefers vertical structure, see
        :func:`gabor_filter_bank`).
    cycles_per_image : sequence of float
        Carrier frequencies in cycles per image width.
    grid : int
        Energy is averaged over ``grid`` × ``grid`` cells.
    batch_size : int
        Images transformed together (bounds memory to about
        ``batch_size * n_filters * 4 * height * width * 8`` bytes).

    Returns
    -------
    energy : ndarray of float32, shape (n_images, n_frequencies, n_orientations, grid, grid)
        Mean quadrature energy ``sqrt(even² + odd²)`` per cell (no log applied).
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must have shape (n_images, height, width), got {images.shape}")
    n, h, w = images.shape
    if h % grid or w % grid:
        raise ValueError(f"image shape {(h, w)} is not divisible by grid={grid}")
    frequencies = [c / w for c in cycles_per_image]
    orientations = [k * np.pi / n_orientations for k in range(n_orientations)]
    ph, pw = 2 * h, 2 * w  # zero padding: linear (not circular) convolution
    kernels = gabor_filter_bank((ph, pw), frequencies, orientations)
    kf = scipy.fft.fft2(kernels).astype(np.complex64)  # (F, O, ph, pw)
    out = np.empty((n, len(frequencies), len(orientations), grid, grid), dtype=np.float32)
    for start in range(0, n, batch_size):
        batch = images[start : start + batch_size].astype(np.float32)
        batch = batch - batch.mean(axis=(1, 2), keepdims=True)
        padded = np.zeros((batch.shape[0], ph, pw), dtype=np.float32)
        padded[:, :h, :w] = batch
        imf = scipy.fft.fft2(padded, workers=-1)  # complex64, (b, ph, pw)
        resp = scipy.fft.ifft2(imf[:, None, None] * kf[None], workers=-1)[..., :h, :w]
        energy = np.abs(resp)  # sqrt(even² + odd²), float32
        b = batch.shape[0]
        pooled = energy.reshape(b, *kf.shape[:2], grid, h // grid, grid, w // grid).mean(
            axis=(4, 6)
        )
        out[start : start + b] = pooled
    return out


def load_grayscale_images(
    paths: Sequence[Path], image_size: int = DEFAULT_IMAGE_SIZE, source: str = "<stimuli table>"
) -> np.ndarray:
    """Load images as grayscale float32 in [0, 1], resized to ``image_size`` squared.

    Returns
    -------
    images : ndarray of float32, shape (n_images, image_size, image_size)
    """
    out = np.empty((len(paths), image_size, image_size), dtype=np.float32)
    for i, path in enumerate(paths):
        if not Path(path).is_file():
            raise BrainpipeInputError(source, "image", f"image file {path} does not exist")
        with Image.open(path) as im:
            g = im.convert("L")
            if g.size != (image_size, image_size):
                g = g.resize((image_size, image_size), Image.Resampling.BILINEAR)
            out[i] = np.asarray(g, dtype=np.float32) / 255.0
    return out


@register_feature_model("gabor", required_columns=("image",))
def gabor(stimuli: pd.DataFrame, stimuli_dir: Path, train_mask: np.ndarray) -> np.ndarray:
    """Gabor energy features of each stimulus image.

    Parameters
    ----------
    stimuli : DataFrame
        Stimuli table with an ``image`` column (path relative to ``stimuli_dir``).
    stimuli_dir : Path
        Folder the image paths are relative to.
    train_mask : ndarray of bool, shape (n_stimuli,)
        Unused: the filter bank is fixed, nothing is fitted.

    Returns
    -------
    features : ndarray of float32, shape (n_stimuli, n_frequencies * n_orientations * grid**2)
        ``log(1 + energy)``, flattened in (frequency, orientation, row, column) order
        (3 × 4 × 8 × 8 = 768 features by default).
    """
    source = table_source(stimuli)
    check_columns(stimuli, ["image"], source)
    paths = [Path(stimuli_dir) / str(p) for p in stimuli["image"]]
    images = load_grayscale_images(paths, source=source)
    energy = gabor_energy(images)
    return np.log1p(energy.reshape(len(images), -1)).astype(np.float32)
