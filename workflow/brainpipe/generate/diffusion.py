"""The second stage of reconstruction: latent diffusion conditioned on decoded CLIP embeddings.

Brain-Diffuser (Ozcelik & VanRullen 2023) regresses brain responses onto CLIP image
embeddings and runs Versatile Diffusion's image-variation UNet, which cross-attends to
those embeddings, starting from its first stage's image noised to ``strength`` 0.75
(img2img); MindEye (Scotti et al. 2023) feeds its decoded CLIP image embeddings to the
same kind of image-conditioned diffusion model. Here that model is diffusers' own
``StableDiffusionImg2ImgPipeline`` with its text-prompt conditioning replaced by the
decoded image embeddings (``prompt_embeds``: the ``(batch, tokens, channels)`` context the
UNet cross-attends to, exactly how Stable Diffusion image variations and Versatile
Diffusion's image UNet are conditioned) and its ``image`` argument the first stage's
predicted VAE latents (Brain-Diffuser's initialisation). Nothing of the denoising loop,
guidance, noising or scheduling is ours.

The components are diffusers' config classes: a ``UNet2DConditionModel`` (built tiny from
:data:`TINY_UNET` or loaded from a Stable-Diffusion-layout folder / hub repo's ``unet/``),
a ``DDIMScheduler`` and the first stage's ``AutoencoderKL`` (:mod:`.autoencoder`). With no
pretrained weights the tiny UNet is fitted as a conditional denoiser on the TRAINING
stimuli only (their VAE latents, conditioned on their CLIP embeddings) for
``fit_steps`` Adam steps (0: left at its seeded random initialisation), the same way the
first stage's autoencoder is fitted when it has no weights.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: A tiny UNet2DConditionModel (diffusers' own config keys); cross-attention width is set
#: to the conditioning embedding's channel count when built.
TINY_UNET: dict[str, Any] = {
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}

#: Stable Diffusion's noise schedule (DDIM sampling), as its scheduler_config.json sets it.
SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def build_unet(sample_size: int, cross_attention_dim: int, seed: int = 0, config=None):
    """A seeded random-initialised ``UNet2DConditionModel`` of ``config`` over :data:`TINY_UNET`."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(int(seed))
    return UNet2DConditionModel(
        **{
            **TINY_UNET,
            **(config or {}),
            "sample_size": int(sample_size),
            "cross_attention_dim": int(cross_attention_dim),
        }
    )


def build_scheduler():
    """diffusers' ``DDIMScheduler`` with Stable Diffusion's schedule (:data:`SCHEDULER`)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER)


def fit_unet(
    unet,
    scheduler,
    latents: np.ndarray,
    embeds: np.ndarray,
    steps: int = 200,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
):
    """Fit ``unet`` as a conditional denoiser (epsilon prediction, DDPM's objective).

    Parameters
    ----------
    unet : diffusers.UNet2DConditionModel
    scheduler : diffusers scheduler
        Its ``add_noise`` and ``num_train_timesteps`` define the forward process.
    latents : ndarray, shape (n, channels, h, w)
        VAE latents of the TRAINING stimuli, already multiplied by the VAE's scaling factor.
    embeds : ndarray, shape (n, tokens, channels)
        Their conditioning embeddings (the true CLIP embeddings, not decoded ones).
    steps, batch_size, lr, seed
        Adam steps on random mini-batches; a seeded generator draws batches, noise and times.

    Returns
    -------
    The unet (eval mode) and the final loss (nan if ``steps`` is 0).
    """
    import torch

    x = torch.as_tensor(latents, dtype=torch.float32)
    c = torch.as_tensor(embeds, dtype=torch.float32)
    gen = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.Adam(unet.parameters(), lr=lr)
    n_t = int(scheduler.config.num_train_timesteps)
    loss = torch.tensor(float("nan"))
    unet.train()
    for step in range(int(steps)):
        idx = torch.randint(0, len(x), (min(int(batch_size), len(x)),), generator=gen)
        noise = torch.randn(x[idx].shape, generator=gen)
        t = torch.randint(0, n_t, (len(idx),), generator=gen)
        pred = unet(scheduler.add_noise(x[idx], noise, t), t, encoder_hidden_states=c[idx]).sample
        loss = ((pred - noise) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            log.info("diffusion unet step %d: loss %.4f", step, float(loss.detach()))
    unet.eval()
    return unet, float(loss.detach())


def save_unet(unet, scheduler, folder: str | Path) -> Path:
    """Stable Diffusion's layout: ``unet/`` and ``scheduler/`` (``save_pretrained``)."""
    unet.save_pretrained(str(Path(folder) / "unet"), safe_serialization=True)
    scheduler.save_pretrained(str(Path(folder) / "scheduler"))
    return Path(folder)


def load_unet(source: str | Path, cache_dir: str | Path | None = None):
    """UNet and scheduler from a Stable-Diffusion-layout folder or cached hub repo (offline).

    ``source`` is a local folder holding ``unet/`` and ``scheduler/`` or a hub repo id
    whose files the ``weights`` rule put in ``cache_dir`` (never downloaded here).
    """
    from diffusers import DDIMScheduler, UNet2DConditionModel

    kw: dict[str, Any] = {"local_files_only": True}
    if cache_dir is not None and not Path(source).is_dir():
        kw["cache_dir"] = str(cache_dir)
    unet = UNet2DConditionModel.from_pretrained(str(source), subfolder="unet", **kw).eval()
    scheduler = DDIMScheduler.from_pretrained(str(source), subfolder="scheduler", **kw)
    return unet, scheduler


def make_pipeline(vae, unet, scheduler):
    """diffusers' ``StableDiffusionImg2ImgPipeline`` over the three components.

    No text encoder, tokenizer or safety checker: the conditioning arrives as
    ``prompt_embeds`` (decoded image embeddings), so the pipeline never tokenises.
    """
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline(
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(
    pipe,
    embeds: np.ndarray,
    init_latents: np.ndarray | None,
    strength: float = 0.75,
    steps: int = 20,
    guidance: float = 3.0,
    seed: int = 0,
    batch_size: int = 16,
) -> np.ndarray:
    """Images from conditioning embeddings, optionally starting from VAE latents (img2img).

    Parameters
    ----------
    pipe : diffusers.StableDiffusionImg2ImgPipeline
        From :func:`make_pipeline`.
    embeds : ndarray, shape (n, tokens, channels)
        Decoded CLIP image embeddings: the context the UNet cross-attends to.
    init_latents : ndarray, shape (n, channels, h, w), or None
        Unscaled first-stage latents (the pipeline noises them to ``strength``), or None:
        generation from pure noise (``strength`` forced to 1).
    strength : float
        Fraction of the noise schedule the init is noised to (Brain-Diffuser: 0.75).
    steps : int
        DDIM steps of the full schedule (``strength * steps`` of them run).
    guidance : float
        Classifier-free guidance scale; the unconditional context is a zero embedding.
    seed : int
        One generator for the whole call: the same inputs give the same images.

    Returns
    -------
    ndarray of uint8, shape (n, height, width, 3)
    """
    import torch

    vae = pipe.vae
    side = int(pipe.unet.config.sample_size)
    if init_latents is None:
        strength = 1.0
        init = torch.zeros((len(embeds), int(pipe.unet.config.in_channels), side, side))
    else:
        init = torch.as_tensor(init_latents, dtype=torch.float32) * vae.config.scaling_factor
    gen = torch.Generator().manual_seed(int(seed))
    out = []
    with torch.no_grad():
        for s in range(0, len(embeds), int(batch_size)):
            c = torch.as_tensor(embeds[s : s + int(batch_size)], dtype=torch.float32)
            images = pipe(
                prompt_embeds=c,
                negative_prompt_embeds=torch.zeros_like(c),
                image=init[s : s + int(batch_size)],
                strength=float(strength),
                num_inference_steps=int(steps),
                guidance_scale=float(guidance),
                generator=gen,
                output_type="np",
            ).images
            out.append(np.clip(np.rint(images * 255), 0, 255).astype(np.uint8))
    return np.concatenate(out)
