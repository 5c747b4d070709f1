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
    "gpu": 0,
}


def generate_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``generate`` block of ``config`` over :data:`DEFAULTS`."""
    return {**DEFAULTS, **(config.get("generate") or {})}


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
        vae, loss = ae.load_autoencoder(p["weights"]), None
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
) -> dict[str, Any]:
    """Decode the generator's latents from one subject × ROI and generate the test images."""
    import torch

    from brainpipe.models.data import load_job_data, standardiser
    from brainpipe.ridge import fit_ridge, make_group_folds, solve_ridge_cv

    p = generate_params(config)
    torch.set_num_threads(max(1, int(threads)))
    data = load_job_data(betas_path, [], splits_path, roi, subject)
    store = open_zarr(latents_path)
    known = pd.Index(store["stimulus"].values.astype(str))
    for stim in (data.stimuli_train, data.test_stimuli):
        idx = known.get_indexer(stim)
        if (idx < 0).any():
            raise BrainpipeInputError(
                latents_path, "stimulus", f"{stim[idx < 0][0]!r} has no latent"
            )
    latent = np.asarray(store["latent"].values, np.float32)
    Y = latent[known.get_indexer(data.stimuli_train)]
    mean, sd = standardiser(data.betas_train)
    X = (data.betas_train - mean) / sd
    groups = pd.factorize(data.stimuli_train)[0]
    folds = make_group_folds(len(X), min(int(p["n_folds"]), len(set(groups))), groups)
    alphas = np.asarray(p["alphas"], np.float64)
    best, _ = solve_ridge_cv(X, Y, alphas, folds)  # a penalty per latent dimension
    W, b = fit_ridge(X, Y, best)
    predicted = (((data.betas_test - mean) / sd) @ W + b).astype(np.float32)
    vae = ae.load_autoencoder(weights)
    size = int(store.attrs["image_size"])
    images = ae.decode(vae, predicted, size)
    truth = np.asarray(store["image"].values)[known.get_indexer(data.test_stimuli)]
    metrics: dict[str, Any] = {
        "subject": subject,
        "roi": roi,
        "median_alpha": float(np.median(best)),
        "n_train_trials": int(len(X)),
        "n_voxels": int(data.n_voxels),
        **reconstruction_metrics(images, truth),
    }
    net = p["network"]
    if net:
        from brainpipe.features.extract import layer_activations

        big = lambda ims: ae.resize_images(ims, 64)  # noqa: E731
        seed = int(net.get("seed", 0))
        f_true = layer_activations(net["network"], net["layer"], big(truth), seed=seed)
        f_rec = layer_activations(net["network"], net["layer"], big(images), seed=seed)
        metrics[f"two_way_{net['network']}_{net['layer']}"] = two_way_identification(f_rec, f_true)
    write_zarr(
        xr.Dataset(
            {
                "image": (("stimulus", "y", "x", "channel"), images),
                "true_image": (("stimulus", "y", "x", "channel"), truth),
                "latent": (("stimulus", "dim"), predicted),
            },
            coords={"stimulus": data.test_stimuli},
            attrs={"subject": subject, "roi": roi, **provenance_attrs(config)},
        ),
        out_store,
    )
    write_text_atomic(json.dumps(metrics, indent=1), out_metrics)
    log.info("sub-%s %s: %s", subject, roi, metrics)
    return metrics


def collect(metric_files: Sequence[str | Path], out_tsv: str | Path) -> pd.DataFrame:
    """Every reconstruction job's metrics, one row per subject × ROI."""
    rows = [json.loads(Path(f).read_text()) for f in metric_files]
    table = pd.DataFrame(rows).sort_values(["roi", "subject"]).reset_index(drop=True)
    write_text_atomic(table.to_csv(sep="\t", index=False), out_tsv)
    return table
