"""The generation stage of the workflow (``rules/generate.smk``): one function per job.

- :func:`fit_generator` — the image generator (:mod:`.autoencoder`): loaded from
  ``generate.weights`` (a ``save_pretrained`` AutoencoderKL folder) or fitted on the
  TRAINING stimuli of ``splits.tsv`` only; every stimulus image (resized to
  ``generate.image_size``) and its latent go to ``generate/latents.zarr``
  (``image(stimulus, y, x, channel)`` uint8, ``latent(stimulus, dim)``, ``split(stimulus)``).
- :func:`reconstruct` — one subject × ROI: ridge from training trials' betas to the
  latents of their stimuli (a penalty per latent dimension by grouped CV: repeats of a
  stimulus share a fold),
  latents predicted for the test stimuli (responses averaged over repeats), decoded into
  images; writes ``generate/sub-{subject}/{roi}/reconstructions.zarr`` and
  ``metrics.json`` (:func:`brainpipe.generate.metrics.reconstruction_metrics`, plus
  two-way identification in a network layer when ``generate.network`` is set).
- :func:`collect` — every job's metrics into ``generate/metrics.tsv``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from brainpipe.errors import BrainpipeInputError
from brainpipe.generate import autoencoder as ae
from brainpipe.generate.metrics import reconstruction_metrics, two_way_identification
from brainpipe.generate.weights import metric_networks
from brainpipe.storage import open_zarr, provenance_attrs, write_text_atomic, write_zarr

log = logging.getLogger(__name__)

#: Defaults of the ``generate`` config block (documented in config/README.md).
DEFAULTS: dict[str, Any] = {
    "rois": [],
    "image_size": 16,
    "steps": 150,
    "batch_size": 32,
    "lr": 0.002,
    "seed": 0,
    "weights": None,
    "alphas": [1, 10, 100, 1000, 10000, 100000],
    "n_folds": 5,
    "network": None,
    "networks": [],
    "diffusion": None,
    "gpu": 0,
}

#: Defaults of ``generate.diffusion`` (the second stage; off while it is null).
DIFFUSION_DEFAULTS: dict[str, Any] = {
    "embedding": {"network": "clipvitb32", "layer": "embedding", "seed": 0, "weights": "random"},
    "weights": None,
    "fit_steps": 200,
    "fit_lr": 0.001,
    "init": "stage1",
    "strength": 0.75,
    "steps": 20,
    "guidance": 3.0,
    "seed": 0,
}


def generate_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``generate`` block of ``config`` over :data:`DEFAULTS` (and ``diffusion`` over
    :data:`DIFFUSION_DEFAULTS` when set)."""
    p = {**DEFAULTS, **(config.get("generate") or {})}
    if p["diffusion"] is not None:
        d = dict(p["diffusion"] or {})
        emb = {**DIFFUSION_DEFAULTS["embedding"], **(d.get("embedding") or {})}
        p["diffusion"] = {**DIFFUSION_DEFAULTS, **d, "embedding": emb}
    return p


def _cache(config: Mapping[str, Any]) -> Path | None:
    from brainpipe.features.weights import weights_dir

    return weights_dir(config.get("features"))


def _hf_cache(config: Mapping[str, Any]) -> Path:
    from brainpipe.features.networks import hf_cache_dir

    return hf_cache_dir(_cache(config))


def network_features(
    net: Mapping[str, Any], images: np.ndarray, config: Mapping[str, Any], tokens: bool = False
) -> np.ndarray:
    """Activations of ``net`` (``{network, layer, seed, weights}``) for uint8 images."""
    from brainpipe.features.extract import layer_activations

    return layer_activations(
        net["network"],
        net["layer"],
        images,
        seed=int(net.get("seed", 0)),
        pretrained=net.get("weights", "random") == "pretrained",
        weights_dir=_cache(config),
        tokens=tokens,
        vector_token=True,
    )


def fit_generator(
    data_dir: str | Path,
    splits_path: str | Path,
    out_weights: str | Path,
    out_latents: str | Path,
    config: Mapping[str, Any],
    threads: int = 1,
) -> dict[str, Any]:
    """Fit (or load) the autoencoder on training stimuli; encode every stimulus.

    Returns
    -------
    dict
        ``n_train_images``, ``final_loss`` (None when loaded), ``latent_dim``.
    """
    import torch
    from PIL import Image

    from brainpipe.bids import BidsLayout, read_stimuli
    from brainpipe.splits import read_splits

    p = generate_params(config)
    torch.set_num_threads(max(1, int(threads)))
    layout = BidsLayout(data_dir)
    table = read_stimuli(layout.stimuli_table)
    splits = read_splits(splits_path)
    stimuli = table["stimulus"].astype(str).to_numpy()
    missing = [s for s in stimuli if s not in splits.index]
    if missing:
        raise BrainpipeInputError(splits_path, "stimulus", f"{missing[0]!r} has no split")
    images = ae.resize_images(
        [np.asarray(Image.open(layout.stimuli_dir / str(f))) for f in table["image"]],
        int(p["image_size"]),
    )
    split = splits.loc[stimuli].astype(str).to_numpy()
    train = split == "train"
    if p["weights"]:
        vae, loss = ae.load_autoencoder(p["weights"], _hf_cache(config)), None
    else:  # fitted on training stimuli only: test images never enter the generator
        vae, loss = ae.fit_autoencoder(
            images[train],
            steps=int(p["steps"]),
            batch_size=int(p["batch_size"]),
            lr=float(p["lr"]),
            seed=int(p["seed"]),
        )
    ae.save_autoencoder(vae, out_weights)
    latents = ae.encode(vae, images)
    write_zarr(
        xr.Dataset(
            {
                "image": (("stimulus", "y", "x", "channel"), images),
                "latent": (("stimulus", "dim"), latents),
            },
            coords={"stimulus": stimuli, "split": ("stimulus", split)},
            attrs={
                "image_size": int(p["image_size"]),
                "generator": "diffusers.AutoencoderKL",
                "weights": str(p["weights"] or "fitted on the training stimuli"),
                **provenance_attrs(config),
            },
        ),
        out_latents,
    )
    info = {"n_train_images": int(train.sum()), "final_loss": loss, "latent_dim": latents.shape[1]}
    log.info("generator: %s", info)
    return info


def fit_diffusion(
    latents_path: str | Path,
    vae_path: str | Path,
    out_unet: str | Path,
    out_embeddings: str | Path,
    config: Mapping[str, Any],
    threads: int = 1,
) -> dict[str, Any]:
    """The second stage's model: CLIP embeddings of every stimulus and the conditioned UNet.

    Every stimulus's embedding (``generate.diffusion.embedding``: a registry network and
    layer; the decoders' targets) goes to ``generate/embeddings.zarr``
    (``embedding(stimulus, token, channel)``, ``split(stimulus)``). The UNet is loaded
    from ``generate.diffusion.weights`` or built tiny and fitted as a denoiser of the
    TRAINING stimuli's VAE latents conditioned on their embeddings (test stimuli never
    enter it); saved to ``generate/diffusion/`` (``unet/`` + ``scheduler/``).

    Returns
    -------
    dict
        ``embedding_shape``, ``n_train_images``, ``final_loss`` (None when loaded).
    """
    import torch

    from brainpipe.generate import diffusion as df

    p = generate_params(config)
    d = p["diffusion"]
    torch.set_num_threads(max(1, int(threads)))
    store = open_zarr(latents_path)
    images = np.asarray(store["image"].values)
    split = store["split"].values.astype(str)
    stimuli = store["stimulus"].values.astype(str)
    embeds = network_features(d["embedding"], images, config, tokens=True)
    train = split == "train"
    if d["weights"]:
        unet, scheduler = df.load_unet(d["weights"], _hf_cache(config))
        loss = None
        if int(unet.config.cross_attention_dim) != embeds.shape[-1]:
            raise BrainpipeInputError(
                str(d["weights"]),
                "unet.cross_attention_dim",
                f"{unet.config.cross_attention_dim} differs from the width "
                f"{embeds.shape[-1]} of generate.diffusion.embedding "
                f"({d['embedding']['network']}/{d['embedding']['layer']})",
            )
    else:  # fitted on training stimuli only: test images never enter the generator
        vae = ae.load_autoencoder(vae_path)
        side = int(store.attrs["image_size"]) // 2 ** (len(vae.config.block_out_channels) - 1)
        latent = np.asarray(store["latent"].values, np.float32)
        latent = latent.reshape(len(latent), int(vae.config.latent_channels), side, side)
        scheduler = df.build_scheduler()
        unet = df.build_unet(side, embeds.shape[-1], int(d["seed"]))
        unet, loss = df.fit_unet(
            unet,
            scheduler,
            latent[train] * float(vae.config.scaling_factor),
            embeds[train],
            steps=int(d["fit_steps"]),
            batch_size=int(p["batch_size"]),
            lr=float(d["fit_lr"]),
            seed=int(d["seed"]),
        )
        loss = None if int(d["fit_steps"]) == 0 else loss
    df.save_unet(unet, scheduler, out_unet)
    write_zarr(
        xr.Dataset(
            {"embedding": (("stimulus", "token", "channel"), embeds)},
            coords={"stimulus": stimuli, "split": ("stimulus", split)},
            attrs={
                "network": d["embedding"]["network"],
                "layer": d["embedding"]["layer"],
                "weights": d["embedding"]["weights"],
                **provenance_attrs(config),
            },
        ),
        out_embeddings,
    )
    info = {
        "embedding_shape": list(embeds.shape[1:]),
        "n_train_images": int(train.sum()),
        "final_loss": loss,
    }
    log.info("diffusion generator: %s", info)
    return info


def _decode_ridge(
    X: np.ndarray, Y: np.ndarray, X_test: np.ndarray, groups: np.ndarray, p: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Ridge from standardised betas to targets, a penalty per target by grouped CV."""
    from brainpipe.ridge import fit_ridge, make_group_folds, solve_ridge_cv

    folds = make_group_folds(len(X), min(int(p["n_folds"]), len(set(groups))), groups)
    best, _ = solve_ridge_cv(X, Y, np.asarray(p["alphas"], np.float64), folds)
    W, b = fit_ridge(X, Y, best)
    return (X_test @ W + b).astype(np.float32), best


def _network_metrics(
    nets: Sequence[Mapping[str, Any]],
    stages: Mapping[str, np.ndarray],
    truth: np.ndarray,
    config: Mapping[str, Any],
) -> dict[str, float]:
    """Two-way identification of each stage's images against ``truth`` in each network.

    ``stages`` maps a metric prefix (``""`` for stage 1, ``"diffusion_"``) to its images;
    each network is built once and reads the stimuli and every stage in one pass.
    """
    out = {}
    names = list(stages)
    for net in nets:
        feats = network_features(net, np.concatenate([truth, *stages.values()]), config)
        f_true, *f_stages = np.split(feats, len(names) + 1)
        for prefix, f_rec in zip(names, f_stages, strict=True):
            out[f"{prefix}two_way_{net['network']}_{net['layer']}"] = two_way_identification(
                f_rec, f_true
            )
    return out


def reconstruct(
    betas_path: str | Path,
    splits_path: str | Path,
    latents_path: str | Path,
    weights: str | Path,
    roi: str,
    subject: str,
    out_store: str | Path,
    out_metrics: str | Path,
    config: Mapping[str, Any],
    threads: int = 1,
    diffusion: str | Path | None = None,
    embeddings: str | Path | None = None,
) -> dict[str, Any]:
    """Decode the generator's latents from one subject × ROI and generate the test images.

    With ``diffusion`` (the second stage's UNet folder) and ``embeddings`` (its
    conditioning targets), the CLIP embeddings are decoded too (two-way identification
    of the decoded against the true embeddings: ``embedding_two_way``, chance 0.5) and
    turned into images by the diffusion pipeline, started from the first stage's decoded
    latents (``generate.diffusion.init: stage1``) or from noise (``none``); their metrics
    carry the prefix ``diffusion_``.
    """
    import torch

    from brainpipe.models.data import features_for, load_job_data, standardiser

    p = generate_params(config)
    torch.set_num_threads(max(1, int(threads)))
    data = load_job_data(betas_path, [], splits_path, roi, subject)
    store = open_zarr(latents_path)
    source = str(latents_path)
    Y = features_for(store, data.stimuli_train, source, var="latent")
    truth = features_for(store, data.test_stimuli, source, dtype=None, var="image")
    mean, sd = standardiser(data.betas_train)
    X = (data.betas_train - mean) / sd
    groups = pd.factorize(data.stimuli_train)[0]
    X_test = (data.betas_test - mean) / sd
    predicted, best = _decode_ridge(X, Y, X_test, groups, p)  # a penalty per latent dim
    vae = ae.load_autoencoder(weights)
    size = int(store.attrs["image_size"])
    images = ae.decode(vae, predicted, size)
    metrics: dict[str, Any] = {
        "subject": subject,
        "roi": roi,
        "median_alpha": float(np.median(best)),
        "n_train_trials": int(len(X)),
        "n_voxels": int(data.n_voxels),
        **reconstruction_metrics(images, truth),
    }
    stage2: dict[str, Any] = {}
    if diffusion and p["diffusion"]:
        stage2 = _diffusion_stage(
            p, X, X_test, groups, data, embeddings, diffusion, vae, predicted, truth, config
        )
        metrics.update(stage2.pop("metrics"))
    stages = {"": images}
    if stage2:
        stages["diffusion_"] = stage2["diffusion_image"]
    metrics.update(_network_metrics(metric_networks(p), stages, truth, config))
    write_zarr(
        xr.Dataset(
            {
                "image": (("stimulus", "y", "x", "channel"), images),
                "true_image": (("stimulus", "y", "x", "channel"), truth),
                "latent": (("stimulus", "dim"), predicted),
                **{
                    k: (("stimulus", *dims), v)
                    for k, (dims, v) in (
                        ("diffusion_image", (("y", "x", "channel"), stage2.get("diffusion_image"))),
                        ("embedding", (("token", "embedding_channel"), stage2.get("embedding"))),
                    )
                    if v is not None
                },
            },
            coords={"stimulus": data.test_stimuli},
            attrs={"subject": subject, "roi": roi, **provenance_attrs(config)},
        ),
        out_store,
    )
    write_text_atomic(json.dumps(metrics, indent=1), out_metrics)
    log.info("sub-%s %s: %s", subject, roi, metrics)
    return metrics


def _diffusion_stage(
    p: Mapping[str, Any],
    X: np.ndarray,
    X_test: np.ndarray,
    groups: np.ndarray,
    data: Any,
    embeddings: str | Path | None,
    diffusion: str | Path,
    vae: Any,
    predicted_latents: np.ndarray,
    truth: np.ndarray,
    config: Mapping[str, Any],
) -> dict[str, Any]:
    """Decode the CLIP embeddings and generate images from them (the second stage)."""
    from brainpipe.generate import diffusion as df
    from brainpipe.models.data import features_for

    d = p["diffusion"]
    store = open_zarr(embeddings)
    train_emb = features_for(store, data.stimuli_train, str(embeddings), var="embedding")
    true_emb = features_for(store, data.test_stimuli, str(embeddings), var="embedding")
    shape = train_emb.shape[1:]
    Y = train_emb.reshape(len(X), -1)
    decoded, best = _decode_ridge(X, Y, X_test, groups, p)
    true_emb = true_emb.reshape(len(decoded), -1)
    unet, scheduler = df.load_unet(diffusion)
    pipe = df.make_pipeline(vae, unet, scheduler)
    init = None
    if d["init"] == "stage1":
        side = int(unet.config.sample_size)
        init = predicted_latents.reshape(len(predicted_latents), -1, side, side)
    images = df.generate(
        pipe,
        decoded.reshape(len(decoded), *shape),
        init,
        strength=float(d["strength"]),
        steps=int(d["steps"]),
        guidance=float(d["guidance"]),
        seed=int(d["seed"]),
    )
    metrics = {
        "embedding_two_way": two_way_identification(decoded, true_emb),
        "embedding_median_alpha": float(np.median(best)),
        **{f"diffusion_{k}": v for k, v in reconstruction_metrics(images, truth).items()},
    }
    return {
        "metrics": metrics,
        "diffusion_image": images,
        "embedding": decoded.reshape(len(decoded), *shape),
    }


def collect(metric_files: Sequence[str | Path], out_tsv: str | Path) -> pd.DataFrame:
    """Every reconstruction job's metrics, one row per subject × ROI."""
    rows = [json.loads(Path(f).read_text()) for f in metric_files]
    table = pd.DataFrame(rows).sort_values(["roi", "subject"]).reset_index(drop=True)
    write_text_atomic(table.to_csv(sep="\t", index=False), out_tsv)
    return table
