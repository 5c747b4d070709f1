"""The image generator behind reconstruction: a diffusers ``AutoencoderKL``.

Brain-Diffuser's first stage (Ozcelik & VanRullen 2023) and MindEye's low-level path
(Scotti et al. 2023) regress brain responses onto the latents of an image autoencoder
(VDVAE; Stable Diffusion's VAE) and decode the predicted latents into images. Here the
autoencoder is diffusers' ``AutoencoderKL`` built from its own config class. Its weights
are either loaded from a local folder (``save_pretrained`` layout: a pretrained VAE from
the weight cache) or fitted on the TRAINING stimuli of the dataset (never test stimuli)
when no weights are given — on the synthetic world that makes a generator whose decoded
images can be compared with the truth, without any download.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: A small AutoencoderKL (diffusers' own config keys); 2 blocks: latents at 1/2 resolution.
TINY_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "block_out_channels": [16, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "mid_block_add_attention": False,
}


def build_autoencoder(image_size: int, seed: int = 0, config: dict[str, Any] | None = None):
    """A seeded random-initialised ``AutoencoderKL`` of ``config`` (default :data:`TINY_CONFIG`)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(int(seed))
    return AutoencoderKL(**{**TINY_CONFIG, **(config or {}), "sample_size": int(image_size)})


def to_tensor(images: np.ndarray):
    """uint8 images (n, h, w, 3) -> float tensor (n, 3, h, w) in [-1, 1]."""
    import torch

    return torch.as_tensor(np.asarray(images), dtype=torch.float32).permute(0, 3, 1, 2) / 127.5 - 1


def to_uint8(tensor) -> np.ndarray:
    """Float tensor (n, 3, h, w) in [-1, 1] -> uint8 images (n, h, w, 3)."""
    x = ((tensor.detach().clamp(-1, 1) + 1) * 127.5).round().to(dtype=__import__("torch").uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def fit_autoencoder(
    images: np.ndarray,
    steps: int = 200,
    batch_size: int = 32,
    lr: float = 2e-3,
    kl_weight: float = 1e-4,
    seed: int = 0,
    config: dict[str, Any] | None = None,
):
    """Fit an ``AutoencoderKL`` on ``images`` (the training stimuli only).

    Parameters
    ----------
    images : ndarray of uint8, shape (n, size, size, 3)
    steps, batch_size : int
        Adam steps on random mini-batches.
    lr, kl_weight : float
        Learning rate; weight of the posterior's KL term against the pixel MSE.
    seed : int
    config : dict, optional
        Overrides of :data:`TINY_CONFIG`.

    Returns
    -------
    diffusers.AutoencoderKL (eval mode) and the final training loss.
    """
    import torch

    vae = build_autoencoder(images.shape[1], seed, config)
    x = to_tensor(images)
    gen = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    vae.train()
    loss = torch.tensor(float("nan"))
    for step in range(int(steps)):
        idx = torch.randint(0, len(x), (min(int(batch_size), len(x)),), generator=gen)
        posterior = vae.encode(x[idx]).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        loss = ((recon - x[idx]) ** 2).mean() + kl_weight * posterior.kl().mean() / recon[0].numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            log.info("autoencoder step %d: loss %.4f", step, float(loss.detach()))
    vae.eval()
    return vae, float(loss.detach())


def encode(vae, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Posterior-mean latents of uint8 images, flattened: (n, latent_channels * h' * w')."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            z = vae.encode(to_tensor(images[start : start + batch_size])).latent_dist.mean
            out.append(z.reshape(len(z), -1).numpy())
    return np.concatenate(out).astype(np.float32)


def decode(vae, latents: np.ndarray, image_size: int, batch_size: int = 64) -> np.ndarray:
    """Images (n, size, size, 3) uint8 from flattened latents (the generator's output)."""
    import torch

    side = image_size // 2 ** (len(vae.config.block_out_channels) - 1)
    shape = (vae.config.latent_channels, side, side)
    out = []
    with torch.no_grad():
        for start in range(0, len(latents), batch_size):
            z = torch.as_tensor(latents[start : start + batch_size], dtype=torch.float32)
            out.append(to_uint8(vae.decode(z.reshape(len(z), *shape)).sample))
    return np.concatenate(out)


def save_autoencoder(vae, folder: str | Path) -> Path:
    """diffusers' own layout (``config.json`` + ``diffusion_pytorch_model.safetensors``)."""
    vae.save_pretrained(str(folder), safe_serialization=True)
    return Path(folder)


def load_autoencoder(folder: str | Path, cache_dir: str | Path | None = None):
    """An ``AutoencoderKL`` from a ``save_pretrained`` folder (weight cache or our own fit).

    ``folder`` may also be a hub repo id in Stable Diffusion's layout (``vae/``) whose
    files the ``weights`` rule put in ``cache_dir``; it is never downloaded here.
    """
    from diffusers import AutoencoderKL

    if Path(str(folder)).expanduser().is_dir():
        return AutoencoderKL.from_pretrained(str(folder), local_files_only=True).eval()
    return AutoencoderKL.from_pretrained(
        str(folder),
        subfolder="vae",
        cache_dir=None if cache_dir is None else str(cache_dir),
        local_files_only=True,
    ).eval()


def resize_images(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """Stimulus images resized (bilinear, PIL) to ``size`` x ``size`` RGB uint8."""
    from PIL import Image

    return np.stack(
        [
            np.asarray(
                Image.fromarray(np.asarray(im)).convert("RGB").resize((size, size), Image.BILINEAR)
            )
            for im in images
        ]
    )
