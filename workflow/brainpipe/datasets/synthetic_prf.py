"""Spatially local tuning for the synthetic world: population receptive fields (pRFs).

With ``synthetic.response_prf > 0`` the low-level voxels (V1, V4) of
:mod:`brainpipe.datasets.synthetic` no longer respond to features pooled over the whole
image. Each one responds to the features of the image region inside its own population
receptive field, a 2-D Gaussian window (centre and size, in fractions of the image side)
on a spatial feature map of the stimulus, as voxels of early visual cortex do (Dumoulin &
Wandell 2008, NeuroImage 39:647, the pRF model):

    response[s, v] = sum_p g_v(p) sum_k w_v[k] map[s, p, k]

``map[s, p, k]`` is channel ``k`` at grid position ``p``: the leading principal channels
of the response network's token view of ``response_layer`` (every patch token of a
vision transformer, every position of a conv map; the principal axes of the token
vectors pooled over positions and stimuli), or, without a network, four hand-made
channels of the image on an 8 x 8 grid (edge energy, luminance, red-green, blue-yellow).
Each (position, channel) pair is one ``lowlevel`` component of the shared response
space, z-scored across stimuli, so the world stays ``response @ mapping`` with the pRF
inside the mapping: ``mapping[(p, k), v] = g_v(p) w_v[k]``, where ``g_v`` is the voxel's
Gaussian pRF evaluated at the grid positions (summing to 1) and ``w_v`` its channel
weights (drawn as every other tuning weight).

pRF centres follow a retinotopic map: each hemisphere sees the opposite half of the
image, dorsal voxels the lower half, anterior voxels farther from the vertical meridian
(ranks of the voxel's MNI coordinates within its ROI and hemisphere, plus a little
jitter). pRF size (Gaussian sd) is ``response_prf`` in V1 and twice that in V4, growing
with eccentricity (x0.6 at the centre of the image to x1.4 at its edge). The ground
truth stores each voxel's ``prf_x``, ``prf_y`` and ``prf_size`` (NaN outside V1/V4).
"""

from __future__ import annotations

import numpy as np

#: Principal channels per grid position of a network's token map.
N_CHANNELS = 4
#: Images whose tokens fit the channels' principal axes (the first ones, deterministic).
_BASIS_IMAGES = 256
#: Grid of the hand-made map without a network.
_IMAGE_GRID = 8
#: pRF size relative to V1's, per ROI with spatially local tuning.
PRF_SCALE: dict[str, float] = {"V1": 1.0, "V4": 2.0}


def _zscore(a: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=0)
    sd = a.std(axis=0)
    return np.divide(a, sd, out=np.zeros_like(a), where=sd > 1e-12)


def _square_tail(n_tokens: int) -> int:
    """Grid positions among ``n_tokens`` tokens: the largest square (a ViT's patch
    tokens follow its class token; a conv map is all positions)."""
    side = int(np.sqrt(n_tokens))
    return side * side


def _network_map(network: str, layer: str, images: np.ndarray, seed: int) -> np.ndarray:
    """(n, positions, N_CHANNELS): the token view projected on its leading principal axes."""
    from brainpipe.features.extract import layer_activations

    head = layer_activations(network, layer, images[:_BASIS_IMAGES], seed=seed, tokens=True)
    n_pos = _square_tail(head.shape[1])
    flat = head[:, -n_pos:].reshape(-1, head.shape[2]).astype(np.float64)
    mean = flat.mean(axis=0)
    centred = flat - mean
    _, vecs = np.linalg.eigh(centred.T @ centred)
    axes = vecs[:, ::-1][:, :N_CHANNELS]

    def project(tokens: np.ndarray) -> np.ndarray:
        return ((tokens[:, -n_pos:].astype(np.float64) - mean) @ axes).astype(np.float32)

    if len(images) <= _BASIS_IMAGES:
        return project(head)
    return layer_activations(network, layer, images, seed=seed, tokens=True, transform=project)


def _image_map(images: np.ndarray) -> np.ndarray:
    """(n, 64, 4): edge energy, luminance, red-green and blue-yellow on an 8 x 8 grid."""
    from brainpipe.datasets.synthetic_stimuli import edge_energy

    img = images.astype(np.float64) / 255.0
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    lum = 0.299 * r + 0.587 * g + 0.114 * b
    n, h, w = lum.shape
    rows = np.array_split(np.arange(h), _IMAGE_GRID)
    cols = np.array_split(np.arange(w), _IMAGE_GRID)

    def pool(a: np.ndarray) -> np.ndarray:
        return np.stack([a[:, ri][:, :, ci].mean(axis=(1, 2)) for ri in rows for ci in cols], 1)

    energy = np.stack([edge_energy(im, grid=_IMAGE_GRID) for im in images])
    return np.stack([energy, pool(lum), pool(r - g), pool(b - (r + g) / 2)], axis=2)


def local_response(
    network: str, layer: str, images: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The spatially local low-level components of the shared response space.

    Parameters
    ----------
    network, layer : str
        The response network and layer (random-initialised, seeded with ``seed``); an
        empty ``network``: the hand-made image map.
    images : ndarray of uint8, shape (n, height, width, 3)
    seed : int

    Returns
    -------
    response : ndarray, shape (n, n_positions * n_channels)
        Components in (position, channel) order, each z-scored across stimuli.
    positions : ndarray, shape (n_positions, 2)
        Each grid position's centre (x, y) in fractions of the image side (0: left, top),
        row-major from the top left.
    """
    fmap = _network_map(network, layer, images, seed) if network else _image_map(images)
    n, n_pos, n_ch = fmap.shape
    side = int(round(np.sqrt(n_pos)))
    centres = (np.arange(side) + 0.5) / side
    yy, xx = np.meshgrid(centres, centres, indexing="ij")
    positions = np.column_stack([xx.ravel(), yy.ravel()])
    return _zscore(fmap.reshape(n, n_pos * n_ch).astype(np.float64)), positions


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks scaled to (0, 1)."""
    out = np.empty(len(values))
    out[np.argsort(values, kind="stable")] = np.arange(len(values))
    return (out + 0.5) / max(len(values), 1)


def draw_prfs(
    roi: np.ndarray, xyz: np.ndarray, size: float, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Retinotopic pRF centre and size of every V1 and V4 voxel (NaN elsewhere).

    Parameters
    ----------
    roi : ndarray of str, shape (n_voxels,)
    xyz : ndarray, shape (n_voxels, 3)
        MNI millimetres of each voxel.
    size : float
        V1's pRF size (Gaussian sd, fraction of the image side).
    rng : numpy.random.Generator

    Returns
    -------
    dict
        ``prf_x``, ``prf_y`` (centre, fractions of the image side; 0: left, top) and
        ``prf_size`` (sd), each shape (n_voxels,).
    """
    out = {k: np.full(len(roi), np.nan) for k in ("prf_x", "prf_y", "prf_size")}
    right = xyz[:, 0] >= 0
    for name, scale in PRF_SCALE.items():
        for hemi in (True, False):
            sel = np.flatnonzero((roi == name) & (right == hemi))
            if not len(sel):
                continue
            side = 1.0 if hemi else -1.0  # the right hemisphere sees the left half
            cx = 0.5 - side * (0.03 + 0.42 * _ranks(xyz[sel, 1]))  # anterior: eccentric
            cy = 0.05 + 0.9 * _ranks(xyz[sel, 2])  # dorsal: the lower half (y grows down)
            cx = np.clip(cx + rng.normal(0.0, 0.03, len(sel)), 0.02, 0.98)
            cy = np.clip(cy + rng.normal(0.0, 0.03, len(sel)), 0.02, 0.98)
            ecc = np.hypot(cx - 0.5, cy - 0.5) / 0.5
            out["prf_x"][sel], out["prf_y"][sel] = cx, cy
            out["prf_size"][sel] = size * scale * (0.6 + 0.8 * np.clip(ecc, 0.0, 1.0))
    return out


def prf_weights(prfs: dict[str, np.ndarray], positions: np.ndarray) -> np.ndarray:
    """Each voxel's Gaussian pRF at the grid positions, summing to 1; 0 without a pRF.

    Returns
    -------
    ndarray, shape (n_positions, n_voxels)
    """
    has = np.isfinite(prfs["prf_size"])
    g = np.zeros((len(positions), len(has)))
    dx = positions[:, :1] - prfs["prf_x"][has]
    dy = positions[:, 1:] - prfs["prf_y"][has]
    g[:, has] = np.exp(-(dx**2 + dy**2) / (2.0 * prfs["prf_size"][has] ** 2))
    g[:, has] /= g[:, has].sum(axis=0)
    return g


def expand(channel_weights: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``mapping[(p, k), v] = g[p, v] * channel_weights[k, v]``, shape (n_pos * K, n_voxels)."""
    n_ch, n_vox = channel_weights.shape
    return (g[:, None, :] * channel_weights[None, :, :]).reshape(len(g) * n_ch, n_vox)
