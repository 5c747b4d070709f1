"""What one workflow job does: train a registered model, pretrain a shared backbone,
evaluate predictions, gather the summary. Scripts call these and nothing else."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from safetensors.numpy import load_file, save_file

from brainpipe.models import get_model, model_params
from brainpipe.models.data import load_job_data, roi_betas
from brainpipe.models.evaluation import decoding_metrics, encoding_metrics
from brainpipe.storage import (
    atomic_path,
    open_zarr,
    provenance_attrs,
    write_text_atomic,
    write_zarr,
)

log = logging.getLogger(__name__)


def _save_weights(
    weights: dict[str, np.ndarray], path: str | Path, metadata: dict[str, str]
) -> None:
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
    with atomic_path(path) as tmp:
        save_file(arrays, str(tmp), metadata={k: str(v) for k, v in metadata.items()})


def train_job(
    model: str,
    subject: str,
    roi: str,
    betas_path: str | Path,
    feature_paths: list[str | Path],
    splits_path: str | Path,
    weights_path: str | Path,
    predictions_path: str | Path,
    config: dict[str, Any] | None = None,
    pretrained_path: str | Path | None = None,
) -> None:
    """Fit model ``model`` on one subject × ROI; write weights (safetensors) and predictions (Zarr).

    Predictions: ``predicted(stimulus, output)`` for the subject's test stimuli (output =
    voxel for encoding, embedding dimension for decoding), plus ``predicted_<name>`` for
    any extra (baseline) predictions.
    """
    spec = get_model(model)
    params = model_params(model, config)
    # A voxelwise model streams the betas itself, and a model that reads them itself
    # (``reads_betas``: the shared backbone's fine-tune, one session's trials) reads what
    # it uses; any other gets this job's own copy, which it may overwrite (decoders
    # z-score in place rather than copy every trial).
    lazy = spec.voxelwise or spec.reads_betas
    data = load_job_data(betas_path, list(feature_paths), splits_path, roi, subject, lazy=lazy)
    data.disposable = True
    if spec.cross_subject:
        params["pretrained"] = load_file(str(pretrained_path))
    t0 = time.perf_counter()
    result = spec.fit(data, params)
    seconds = time.perf_counter() - t0
    log.info("%s sub-%s %s: fitted in %.1f s (%s)", model, subject, roi, seconds, result.info)
    metadata = {
        "model": model,
        "kind": spec.kind,
        "subject": subject,
        "roi": roi,
        "features": ",".join(data.feature_names),
        "n_train_trials": str(data.n_train),
        "n_voxels_filled": str(data.n_voxels_filled),
        "fit_seconds": f"{seconds:.2f}",
        **result.info,
        **provenance_attrs(config),
    }
    _save_weights(result.weights, weights_path, metadata)
    output = "voxel" if spec.kind == "encoding" else "dim"
    coords: dict[str, Any] = {"stimulus": data.test_stimuli}
    if spec.kind == "encoding":
        coords.update({c: ("voxel", v) for c, v in data.voxel_coords.items()})
    variables = {"predicted": (("stimulus", output), result.predicted.astype(np.float32))}
    for name, pred in result.extra_predictions.items():
        variables[f"predicted_{name}"] = (("stimulus", output), np.asarray(pred, np.float32))
    write_zarr(
        xr.Dataset(variables, coords=coords, attrs={**metadata, "stage": "train"}), predictions_path
    )


def pretrain_job(
    model: str,
    roi: str,
    betas_paths: dict[str, str | Path],
    feature_paths: list[str | Path],
    splits_path: str | Path,
    out_paths: dict[str, str | Path],
    config: dict[str, Any] | None = None,
) -> None:
    """Pretrain a cross-subject model once per held-out subject (leave-one-subject-out).

    Every subject's data are opened lazily (``load_job_data(..., lazy=True)``: trials,
    stimuli and embeddings in memory, betas left in the store); the model's ``pretrain``
    reads the betas it needs. It gets a scratch folder as ``params["scratch_dir"]``
    (a temporary folder under ``$TMPDIR``, removed when the job ends), shared by the
    held-out subjects' pretrainings: the shared backbone keeps each subject's z-scored
    training betas there rather than in memory (1.6 GB per NSD subject on disk).

    Parameters
    ----------
    betas_paths : dict of subject -> path
        Every subject's betas store.
    out_paths : dict of held-out subject -> path
        Where the weights pretrained on all *other* subjects go.
    """
    spec = get_model(model)
    params = model_params(model, config)
    datasets = {
        s: load_job_data(p, list(feature_paths), splits_path, roi, s, lazy=True)
        for s, p in betas_paths.items()
    }
    with tempfile.TemporaryDirectory(prefix=f"brainpipe-pretrain-{model}-") as scratch:
        params["scratch_dir"] = scratch
        for held_out, path in out_paths.items():
            others = {s: d for s, d in datasets.items() if s != held_out}
            t0 = time.perf_counter()
            weights = spec.pretrain(others, params)
            log.info(
                "%s %s without sub-%s: pretrained in %.1f s",
                model,
                roi,
                held_out,
                time.perf_counter() - t0,
            )
            _save_weights(
                weights,
                path,
                {
                    "model": model,
                    "roi": roi,
                    "held_out": held_out,
                    "subjects": ",".join(sorted(others)),
                    **provenance_attrs(config),
                },
            )


def evaluate_job(
    model: str,
    roi: str,
    betas_path: str | Path,
    predictions_path: str | Path,
    metrics_path: str | Path,
    scores_path: str | Path,
    labels: dict[str, str],
    embedding_path: str | Path | None = None,
    config: dict[str, Any] | None = None,
    n_boot: int = 1000,
    n_way: int | None = None,
    draws: int = 30,
) -> dict[str, Any]:
    """Score one job's test predictions; write ``metrics.json`` and per-output scores (Zarr).

    Encoding: per-voxel r, R², noise ceiling, score against the averaged test responses
    (every ``predicted_<name>`` of the job is summarised too, as ``<name>_*`` metrics).
    Decoding: retrieval / identification against the test stimuli's embeddings from
    ``embedding_path`` (and the same for every ``predicted_<name>`` baseline), plus sampled
    ``n_way`` retrieval over ``draws`` random draws when ``n_way`` is set.
    """
    spec = get_model(model)
    predictions = open_zarr(predictions_path)
    test_stimuli = predictions["stimulus"].values.astype(str)
    betas = roi_betas(betas_path, roi)
    metrics: dict[str, Any] = {**labels, "roi": roi, "kind": spec.kind}
    metrics["n_train_trials"] = int(predictions.attrs.get("n_train_trials", 0))
    metrics["n_voxels"] = int(betas.sizes["voxel"])
    metrics["n_test_stimuli"] = int(len(test_stimuli))
    if spec.kind == "encoding":
        from brainpipe.models.data import average_test_responses, voxel_coords

        observed, repeats = average_test_responses(betas, test_stimuli)
        summary, per_voxel = encoding_metrics(
            observed, predictions["predicted"].values, betas["ncsnr"].values, repeats, n_boot
        )
        metrics["mean_repeats"] = float(repeats.mean())
        metrics.update(summary)
        for var in predictions.data_vars:
            if var.startswith("predicted_"):  # baselines / variants fitted in the same job
                extra, _ = encoding_metrics(
                    observed, predictions[var].values, betas["ncsnr"].values, repeats, n_boot
                )
                name = var[len("predicted_") :]
                metrics.update({f"{name}_{k}": v for k, v in extra.items()})
        scores = xr.Dataset(
            {k: ("voxel", np.asarray(v, np.float32)) for k, v in per_voxel.items()},
            coords={c: ("voxel", v) for c, v in voxel_coords(betas).items()},
        )
    else:
        from brainpipe.models.data import features_for

        true = features_for(open_zarr(embedding_path), test_stimuli, str(embedding_path))
        sampled = {"n_way": n_way, "draws": draws}
        metrics.update(decoding_metrics(predictions["predicted"].values, true, n_boot, **sampled))
        for var in predictions.data_vars:
            if var.startswith("predicted_"):
                name = var[len("predicted_") :]
                metrics.update(
                    decoding_metrics(
                        predictions[var].values, true, n_boot, prefix=f"{name}_", **sampled
                    )
                )
        from brainpipe.models.evaluation import similarity_matrix

        sim = similarity_matrix(predictions["predicted"].values, true)
        scores = xr.Dataset(
            {"similarity": (("stimulus", "candidate"), sim.astype(np.float32))},
            coords={"stimulus": test_stimuli, "candidate": test_stimuli},
        )
    scores.attrs.update(
        {
            **{k: str(v) for k, v in labels.items()},
            "roi": roi,
            "kind": spec.kind,
            "stage": "evaluate",
            **provenance_attrs(config),
        }
    )
    write_zarr(scores, scores_path)
    write_text_atomic(json.dumps(metrics, indent=2), metrics_path)
    return metrics
