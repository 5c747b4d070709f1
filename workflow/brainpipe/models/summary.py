"""The tidy ``summary.tsv``: one row per subject × ROI × model × features.

Each evaluate job writes one ``metrics.json``. A model that trains baselines on the same
data inside its own job (the shared backbone's per-subject MLP and ridge decoder, the
in-context encoder's per-support-size predictions and ridge on each support set) stores
their metrics under ``<baseline>_<metric>`` keys; here each baseline becomes a row of its
own, with ``baseline_of`` naming the job it ran in, so every column means one thing on
every row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from brainpipe.storage import write_text_atomic

#: Leading columns of summary.tsv, in order: together they identify a row.
KEY_COLUMNS = ["dataset", "subject", "roi", "model", "baseline_of", "kind", "features",
               "space", "train_subject"]  # fmt: skip

#: Metrics a decoding job reports per predictor (the model or one of its baselines).
DECODING_METRICS = ("top1", "top5", "two_way")


#: The key whose ``<name>_`` form marks a baseline scored in an encoding job.
ENCODING_MARKER = "mean_r"


def _baseline_names(metrics: dict[str, Any]) -> list[str]:
    """Baselines scored in a job: every ``<name>_top1`` (decoding) or ``<name>_mean_r``
    (encoding) key but the model's own."""
    if metrics.get("kind") == "encoding":
        suffix = f"_{ENCODING_MARKER}"
        return sorted(key[: -len(suffix)] for key in metrics if key.endswith(suffix))
    return sorted(
        key[: -len("_top1")]
        for key in metrics
        if key.endswith("_top1") and not key.startswith(DECODING_METRICS)
    )


def tidy_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Split one job's metrics into the model's row and one row per in-job baseline.

    Parameters
    ----------
    metrics : dict
        One ``metrics.json``.

    Returns
    -------
    list of dict
        The model's row first (``baseline_of`` empty), then one row per baseline with
        ``model`` set to the baseline's name and ``baseline_of`` to the job's model.
    """
    names = _baseline_names(metrics)
    prefixes = tuple(f"{name}_" for name in names)
    own = {k: v for k, v in metrics.items() if not k.startswith(prefixes)}
    own.setdefault("baseline_of", "")
    rows = [own]
    labels = {k: v for k, v in own.items() if k in KEY_COLUMNS or k.startswith("n_")}
    for name in names:
        row = {**labels, "model": name, "baseline_of": metrics["model"]}
        row.update({k[len(name) + 1 :]: v for k, v in metrics.items() if k.startswith(f"{name}_")})
        rows.append(row)
    return rows


def aligned_summary_rows(table: pd.DataFrame, dataset: str, roi: str) -> pd.DataFrame:
    """``align/decoding.tsv`` as rows of the tidy ``summary.tsv``.

    One row per decoded subject x alignment method x features x fitted subject:
    ``subject`` is the subject decoded, ``train_subject`` the one the decoder was fitted
    on, ``space = aligned-<method>`` (native rows have ``space = native``), ``model`` the
    registered decoder (``align.decoding_models``).
    """
    out = table.rename(columns={"target": "subject", "source": "train_subject"})
    out.insert(0, "dataset", dataset)
    out["roi"] = roi
    out["kind"] = "decoding"
    out["baseline_of"] = ""
    out["space"] = "aligned-" + out.pop("method").astype(str)
    out.pop("relation")
    out.pop("fit_info")
    return out


def collect_summary(
    metrics_paths: list[str | Path],
    out_tsv: str | Path,
    aligned_decoding: str | Path | None = None,
    dataset: str = "",
    aligned_roi: str = "",
) -> pd.DataFrame:
    """Gather every job's ``metrics.json`` into one tidy ``summary.tsv``.

    Parameters
    ----------
    metrics_paths : list of path
        The evaluate jobs' ``metrics.json`` files.
    out_tsv : path
        Written atomically.
    aligned_decoding : path, optional
        ``align/decoding.tsv`` (:mod:`brainpipe.align.decoding`): decoders fitted in an
        aligned space, one row per decoded subject x ROI x model x features x
        ``space`` (``aligned-<method>``) x ``train_subject``. With it, every row has
        ``space`` (``native`` for the ordinary jobs) and ``train_subject`` (the subject
        itself for them).
    dataset, aligned_roi : str
        ``dataset`` and ``roi`` of the aligned rows (``align.roi``).

    Returns
    -------
    DataFrame
        One row per subject × ROI × model (baselines included) × features.
    """
    rows = [row for p in metrics_paths for row in tidy_rows(json.loads(Path(p).read_text()))]
    table = pd.DataFrame(rows)
    if aligned_decoding is not None:
        aligned = pd.read_csv(aligned_decoding, sep="\t", dtype={"source": str, "target": str})
        table["space"] = "native"
        table["train_subject"] = table["subject"]
        table = pd.concat(
            [table, aligned_summary_rows(aligned, dataset, aligned_roi)], ignore_index=True
        )
    order = [c for c in KEY_COLUMNS if c in table]
    table = table[order + [c for c in table if c not in order]]
    table["baseline_of"] = table["baseline_of"].fillna("")
    table = table.sort_values(
        [
            c
            for c in [
                "dataset",
                "kind",
                "space",
                "model",
                "baseline_of",
                "subject",
                "train_subject",
                "roi",
                "features",
            ]  # fmt: skip
            if c in table
        ]
    )
    table = table.reset_index(drop=True)
    write_text_atomic(table.to_csv(sep="\t", index=False, float_format="%.6g"), out_tsv)
    return table
