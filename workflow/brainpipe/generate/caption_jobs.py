"""Brain captioning in the workflow (``rules/generate.smk``, config ``generate.captions``).

Brain → embedding → caption, as brain-captioning papers do it (BrainCap; MindEye2's
captions): an existing decoder (``generate.captions.decoder``, e.g. ``ridgedecoder``)
predicts each test stimulus's embedding (feature store ``generate.captions.features``)
from the betas, and a caption decoder (:mod:`.captioner`) turns the predicted embedding
into words. One function per job:

- :func:`fit_captioner_job` — the caption decoder, trained on the TRAINING stimuli's
  (embedding, caption) pairs only (test captions never enter it, not even its
  vocabulary); writes ``generate/captions/captioner/``.
- :func:`caption_job` — one subject × ROI: captions of the decoder's predicted embeddings
  of the test stimuli, and (the ceiling) of their true embeddings; writes
  ``generate/captions/sub-{subject}/{roi}/captions.tsv`` (``stimulus``, ``reference``,
  ``caption``, ``caption_true_embedding``).
- :func:`score_captions` — METEOR and CIDEr of every job's captions against the
  references (:mod:`.caption_metrics`, pycocoevalcap), beside the shuffled-reference
  baseline; one METEOR process for all jobs; writes ``generate/captions/scores.tsv``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainpipe.errors import BrainpipeInputError
from brainpipe.storage import atomic_path, open_zarr, write_text_atomic

log = logging.getLogger(__name__)

#: Defaults of the ``generate.captions`` config block (documented in config/README.md).
DEFAULTS: dict[str, Any] = {
    "rois": [],
    "decoder": "ridgedecoder",
    "features": "caption",
    "language_model": None,
    "prefix_length": 4,
    "steps": 400,
    "batch_size": 32,
    "lr": 0.003,
    "noise_sd": 0.3,
    "seed": 0,
    "max_new_tokens": 20,
    "num_beams": 1,
    "metrics": ["meteor", "cider"],
    "n_shuffles": 10,
    "gpu": 0,
}

KEY = "generate.captions"


def caption_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``generate.captions`` block of ``config`` over :data:`DEFAULTS`."""
    return {**DEFAULTS, **((config.get("generate") or {}).get("captions") or {})}


def captions_enabled(config: Mapping[str, Any]) -> bool:
    """True when ``generate.captions.rois`` names at least one ROI."""
    return bool(caption_params(config)["rois"])


def check_caption_config(config: Mapping[str, Any], source: str = "config") -> None:
    """Checks of ``generate.captions`` the schema cannot make (at DAG build).

    Raises
    ------
    BrainpipeInputError
        The decoder is not a registered decoding model, the feature model is not one the
        config computes, or the language model is not a ``gpt2`` network label.
    """
    if not captions_enabled(config):
        return
    from brainpipe.models import get_model

    p = caption_params(config)
    spec = get_model(p["decoder"])
    if spec.kind != "decoding":
        raise BrainpipeInputError(
            source, f"{KEY}.decoder", f"{p['decoder']!r} is an {spec.kind} model, not a decoder"
        )
    known = list(config.get("feature_models") or [])
    if p["features"] not in known:
        raise BrainpipeInputError(
            source, f"{KEY}.features", f"{p['features']!r} is not in feature_models {known}"
        )
    language_model_source(config)


def language_model_source(config: Mapping[str, Any]) -> tuple[str, Path] | None:
    """``(hub repo id, hub cache folder)`` of the configured pretrained language model.

    ``generate.captions.language_model`` names a ``features.networks`` label whose network
    is ``gpt2``: its files are fetched and checked by the ``weights`` rule like every
    network's. None when no language model is configured (a small GPT-2 is trained).
    """
    from brainpipe.features.networks import hf_cache_dir
    from brainpipe.features.weights import network_settings, weights_dir

    label = caption_params(config)["language_model"]
    if not label:
        return None
    nets = network_settings(config.get("features"))
    if label not in nets:
        raise BrainpipeInputError(
            "config",
            f"{KEY}.language_model",
            f"{label!r} is not a features.networks label (known: {sorted(nets)}); add e.g. "
            f"features: {{networks: {{{label}: {{network: gpt2}}}}}}",
        )
    if nets[label]["network"] not in LANGUAGE_MODELS:
        raise BrainpipeInputError(
            "config",
            f"{KEY}.language_model",
            f"network {nets[label]['network']!r} is not a causal language model this "
            f"decoder supports ({sorted(LANGUAGE_MODELS)})",
        )
    if nets[label]["weights"] != "pretrained":
        raise BrainpipeInputError(
            "config",
            f"{KEY}.language_model",
            f"features.networks.{label}.weights must be pretrained",
        )
    return LANGUAGE_MODELS[nets[label]["network"]], hf_cache_dir(
        weights_dir(config.get("features"))
    )


#: Registered networks usable as the caption decoder's language model: hub repo ids.
LANGUAGE_MODELS = {"gpt2": "openai-community/gpt2"}


def _stimuli_captions(stimuli_path: str | Path) -> pd.Series:
    from brainpipe.bids import read_stimuli

    table = read_stimuli(stimuli_path)
    if "caption" not in table.columns:
        raise BrainpipeInputError(stimuli_path, "caption", "column is missing (captions needed)")
    return table.set_index("stimulus")["caption"].fillna("").astype(str)


def _embeddings(store_path: str | Path, stimuli: np.ndarray) -> np.ndarray:
    from brainpipe.models.data import features_for

    store = open_zarr(store_path)
    x = features_for(store, stimuli, str(store_path))
    return x.reshape(len(x), -1)


def fit_captioner_job(
    stimuli_path: str | Path,
    features_path: str | Path,
    splits_path: str | Path,
    out_dir: str | Path,
    config: Mapping[str, Any],
    threads: int = 1,
) -> dict[str, Any]:
    """Train the caption decoder on the training stimuli; write it to ``out_dir``.

    Returns
    -------
    dict
        ``n_train``, ``final_loss``, ``language_model``.
    """
    import torch

    from brainpipe.generate.captioner import fit_captioner, pretrained_language_model
    from brainpipe.splits import read_splits

    p = caption_params(config)
    torch.set_num_threads(max(1, int(threads)))
    captions = _stimuli_captions(stimuli_path)
    splits = read_splits(splits_path)
    train = [s for s in captions.index if splits.get(s) == "train" and captions[s].strip()]
    if len(train) < 2:
        raise BrainpipeInputError(
            stimuli_path, "caption", f"{len(train)} training stimuli with a caption (need >= 2)"
        )
    emb = _embeddings(features_path, np.asarray(train))
    lm = tokenizer = None
    source = language_model_source(config)
    if source is not None:
        lm, tokenizer = pretrained_language_model(*source)
    captioner, loss = fit_captioner(
        emb,
        [captions[s] for s in train],
        lm=lm,
        tokenizer=tokenizer,
        prefix_length=int(p["prefix_length"]),
        steps=int(p["steps"]),
        batch_size=int(p["batch_size"]),
        lr=float(p["lr"]),
        noise_sd=float(p["noise_sd"]),
        seed=int(p["seed"]),
    )
    with atomic_path(Path(out_dir)) as tmp:
        captioner.save(tmp)
    info = {
        "n_train": len(train),
        "final_loss": loss,
        "language_model": source[0] if source else "small GPT-2 trained on the training captions",
    }
    log.info("captioner: %s", info)
    return info


def caption_job(
    predictions_path: str | Path,
    features_path: str | Path,
    stimuli_path: str | Path,
    splits_path: str | Path,
    captioner_dir: str | Path,
    subject: str,
    roi: str,
    out_tsv: str | Path,
    config: Mapping[str, Any],
    threads: int = 1,
) -> pd.DataFrame:
    """Captions of one subject × ROI's decoded embeddings of the test stimuli."""
    import torch

    from brainpipe.generate.captioner import Captioner
    from brainpipe.splits import read_splits

    p = caption_params(config)
    torch.set_num_threads(max(1, int(threads)))
    pred = open_zarr(predictions_path)
    if "predicted" not in pred:
        raise BrainpipeInputError(predictions_path, "predicted", "no decoded embeddings in store")
    stimuli = pred["stimulus"].values.astype(str)
    splits = read_splits(splits_path)
    leaked = [s for s in stimuli if splits.get(s) != "test"]
    if leaked:
        raise BrainpipeInputError(
            predictions_path, "stimulus", f"{leaked[0]!r} is not a test stimulus"
        )
    decoded = np.asarray(pred["predicted"].values, np.float32).reshape(len(stimuli), -1)
    true = _embeddings(features_path, stimuli)
    if decoded.shape[1] != true.shape[1]:
        raise BrainpipeInputError(
            predictions_path,
            "predicted",
            f"{decoded.shape[1]} embedding dimensions; the feature store {features_path} has "
            f"{true.shape[1]} (decoder trained on another feature model?)",
        )
    captioner = Captioner.load(captioner_dir)
    kw = {"max_new_tokens": int(p["max_new_tokens"]), "num_beams": int(p["num_beams"])}
    references = _stimuli_captions(stimuli_path)
    table = pd.DataFrame(
        {
            "subject": subject,
            "roi": roi,
            "stimulus": stimuli,
            "reference": references.reindex(stimuli).fillna("").to_numpy(),
            "caption": captioner.caption(decoded, **kw),
            "caption_true_embedding": captioner.caption(true, **kw),
        }
    )
    write_text_atomic(table.to_csv(sep="\t", index=False), out_tsv)
    log.info("sub-%s %s: %d captions, e.g. %r for %r", subject, roi, len(table),
             table["caption"].iloc[0], table["reference"].iloc[0])  # fmt: skip
    return table


def score_captions(
    caption_files: Sequence[str | Path], out_tsv: str | Path, config: Mapping[str, Any]
) -> pd.DataFrame:
    """METEOR / CIDEr of every caption job against the references and the shuffled baseline.

    One row per subject × ROI: ``{metric}`` (decoded embeddings), ``{metric}_shuffled``
    (the same captions against other test stimuli's references: the baseline),
    ``{metric}_true_embedding`` (the caption decoder on the true embeddings: the ceiling
    the brain decoding approaches), ``n_test``, ``decoder``, ``features``.
    """
    from brainpipe.generate.caption_metrics import CaptionScorer, caption_scores

    p = caption_params(config)
    rows = []
    with CaptionScorer(p["metrics"]) as scorer:
        for path in caption_files:
            table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
            missing = [c for c in ("subject", "roi", "reference", "caption") if c not in table]
            if missing:
                raise BrainpipeInputError(path, missing[0], "column is missing")
            refs = table["reference"].tolist()
            row: dict[str, Any] = {
                "subject": table["subject"].iloc[0],
                "roi": table["roi"].iloc[0],
                "decoder": p["decoder"],
                "features": p["features"],
            }
            seed = int(p["seed"])
            row.update(
                caption_scores(scorer, table["caption"].tolist(), refs, int(p["n_shuffles"]), seed)
            )
            ceiling = caption_scores(
                scorer, table["caption_true_embedding"].tolist(), refs, 0, seed
            )
            row.update({f"{m}_true_embedding": ceiling[m] for m in p["metrics"]})
            rows.append(row)
    out = pd.DataFrame(rows).sort_values(["roi", "subject"]).reset_index(drop=True)
    write_text_atomic(out.to_csv(sep="\t", index=False), out_tsv)
    log.info("caption scores:\n%s", out.to_string())
    return out
