"""What one M/EEG workflow job does: preprocess a subject, train a model, evaluate it.

The rules in ``rules/meeg.smk`` call these and nothing else.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from brainpipe.errors import BrainpipeInputError
from brainpipe.storage import open_zarr, provenance_attrs, write_text_atomic, write_zarr

log = logging.getLogger(__name__)

#: The ``{roi}`` of M/EEG model folders: models see every selected channel.
SENSORS = "sensors"


def _things_eeg2(data: str | Path, subject: str, sessions: list[str] | None, task: str):
    from brainpipe.meeg.preprocess import things_eeg2_recordings

    if not sessions:
        raise BrainpipeInputError("config", "sessions", "THINGS-EEG2 needs its session list")
    return things_eeg2_recordings(data, subject, sessions)


def _bids_meg(data: str | Path, subject: str, sessions: list[str] | None, task: str):
    from brainpipe.meeg.preprocess import bids_meg_recordings

    return bids_meg_recordings(data, subject, sessions, task)


#: The reader of each M/EEG format (a registry entry's ``format``).
FORMATS = {"things-eeg2": _things_eeg2, "bids-meg": _bids_meg}


def recordings_for(
    kind: str, data: str | Path, subject: str, sessions: list[str] | None, task: str
):
    """The recordings of a subject for a dataset of M/EEG format ``kind`` (:data:`FORMATS`)."""
    if kind not in FORMATS:
        raise BrainpipeInputError("config", "dataset", f"no M/EEG reader for format {kind!r}")
    return FORMATS[kind](data, subject, sessions, task)


def preprocess_job(
    kind: str,
    data: str | Path,
    subject: str,
    splits_path: str | Path,
    out: str | Path,
    block: dict[str, Any] | None,
    sessions: list[str] | None = None,
    task: str = "main",
    dataset: str = "",
) -> Path:
    """Preprocess one subject to ``epochs.zarr`` (see :mod:`brainpipe.meeg.preprocess`)."""
    from brainpipe.meeg.preprocess import MeegPreprocessParams, preprocess_subject
    from brainpipe.splits import read_splits

    params = MeegPreprocessParams.from_config(block)
    recs = recordings_for(kind, data, subject, sessions, task)
    return preprocess_subject(
        recs, read_splits(splits_path), out, params,
        attrs={"dataset": dataset, "subject": subject, "format": kind},
    )  # fmt: skip


def _save_weights(weights: dict[str, np.ndarray], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    from brainpipe.storage import atomic_path

    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
    with atomic_path(path) as tmp:
        save_file(arrays, str(tmp), metadata={k: str(v) for k, v in metadata.items()})


def train_job(
    model: str,
    epochs_path: str | Path,
    features_path: str | Path,
    weights_path: str | Path,
    predictions_path: str | Path,
    config: dict[str, Any] | None = None,
) -> None:
    """Fit an M/EEG model; write its weights and ``predictions.zarr``.

    Predictions: ``predicted(stimulus, output)`` (embeddings of the test images) and, for
    models that report one, ``top1_over_time(time)``.
    """
    import xarray as xr

    from brainpipe.meeg.decoding import load_job
    from brainpipe.models import get_model, model_params

    spec = get_model(model)
    if spec.inputs != "epochs":
        raise BrainpipeInputError("config", "models", f"{model!r} is not an M/EEG model")
    params = model_params(model, config)
    job = load_job(epochs_path, features_path, bool(params.get("average_train", True)))
    n_ch, n_t = job.X_train.shape[1:]
    log.info("%s: %d training rows, %d test images, %d channels x %d times",
             model, len(job.X_train), len(job.X_test), n_ch, n_t)  # fmt: skip
    start = time.perf_counter()
    result = spec.fit(job, params)
    info = {**result.info, "fit_seconds": f"{time.perf_counter() - start:.2f}", "model": model}
    _save_weights(result.weights, Path(weights_path), info)
    data_vars = {"predicted": (("stimulus", "output"), result.predicted)}
    coords: dict[str, Any] = {"stimulus": job.test_stimuli.astype(object)}
    if "top1_over_time" in result.info:
        curve = np.array([float(v) for v in result.info["top1_over_time"].split(",")])
        data_vars["top1_over_time"] = (("time",), curve)
        coords["time"] = job.times
    ds = xr.Dataset(
        data_vars, coords=coords,
        attrs={"model": model, **{k: v for k, v in info.items() if k != "top1_over_time"},
               **provenance_attrs(params)},
    )  # fmt: skip
    write_zarr(ds, predictions_path)


def evaluate_job(
    predictions_path: str | Path,
    features_path: str | Path,
    metrics_path: str | Path,
    labels: dict[str, str],
    n_way: int,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Zero-shot retrieval scores of one job (and its accuracy over time) to ``metrics.json``."""
    from brainpipe.meeg.decoding import retrieval_scores

    pred = open_zarr(predictions_path)
    feats = open_zarr(features_path)
    stimuli = np.asarray(pred["stimulus"].values).astype(str)
    row = {s: i for i, s in enumerate(np.asarray(feats["stimulus"].values).astype(str))}
    true = np.asarray(feats["features"].values)[[row[s] for s in stimuli]]
    metrics: dict[str, Any] = {**labels, "kind": "decoding", "roi": SENSORS}
    metrics.update(retrieval_scores(np.asarray(pred["predicted"].values), true, n_way, n_boot))
    if "top1_over_time" in pred:
        curve = np.asarray(pred["top1_over_time"].values)
        times = np.asarray(pred["time"].values)
        metrics["peak_time_s"] = float(times[int(np.argmax(curve))])
        metrics["peak_top1_over_time"] = float(curve.max())
        metrics["top1_over_time"] = ",".join(f"{v:.4f}" for v in curve)
        metrics["times"] = ",".join(f"{v:.4f}" for v in times)
    write_text_atomic(json.dumps(metrics, indent=1), metrics_path)
    return metrics


def retrieval_ranking(
    predictions_path: str | Path, features_path: str | Path, n_queries: int, k: int = 5
) -> list[tuple[str, list[str]]]:
    """``n_queries`` test images (a seeded draw) and the ``k`` test images ranked first.

    Candidates are all the job's test images, ranked by the similarity of their true
    embedding to the query's decoded one (the measure :func:`evaluate_job` scores).
    """
    from brainpipe.meeg.decoding import cosine_similarity

    pred = open_zarr(predictions_path)
    feats = open_zarr(features_path)
    stimuli = np.asarray(pred["stimulus"].values).astype(str)
    row = {s: i for i, s in enumerate(np.asarray(feats["stimulus"].values).astype(str))}
    true = np.asarray(feats["features"].values)[[row[s] for s in stimuli]]
    sim = cosine_similarity(np.asarray(pred["predicted"].values), true)
    rng = np.random.default_rng(0)
    picked = np.sort(rng.choice(len(stimuli), size=min(n_queries, len(stimuli)), replace=False))
    order = np.argsort(-sim[picked], axis=1, kind="stable")[:, :k]
    return [(stimuli[q], list(stimuli[o])) for q, o in zip(picked, order, strict=True)]


def write_meeg_report(
    summary_tsv: str | Path,
    out_html: str | Path,
    title: str,
    recipe: dict | None = None,
    run: dict | None = None,
    predictions: dict[tuple[str, str, str], tuple[str | Path, str | Path]] | None = None,
    images: dict[str, Path] | None = None,
    figures_dir: str | Path | None = None,
    truth_window: tuple[float, float] | None = None,
) -> Path:
    """The M/EEG report: accuracy over time per model, retrieval scores and retrieval grids.

    With a ``recipe`` (the config's ``recipe`` block) the page opens with "paper vs this
    run" (:func:`brainpipe.report.page.paper_vs_run`); ``run`` says what this run used.
    ``predictions`` maps (subject, model, features) to the job's ``predictions.zarr`` and
    feature store; with ``images`` (stimulus id -> image file) each model gets a grid of
    test images beside their top-5 retrieved test images (one subject per model). Each
    figure also goes to ``figures_dir/<name>.png`` when given (for ``snakemake --report``).
    ``truth_window`` (a synthetic world's true information window, s) is shaded on the
    time-resolved curves, and the peaks are compared with it.
    """
    import base64
    import html
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from brainpipe.report.page import ReportInputs, paper_vs_run

    table = pd.read_csv(summary_tsv, sep="\t", dtype={"subject": str})
    figs = []
    timed = (
        table[table.get("top1_over_time").notna()] if "top1_over_time" in table else table.iloc[:0]
    )
    if len(timed):
        fig, ax = plt.subplots(figsize=(7, 3.4))
        for n, ((model, feats), rows) in enumerate(timed.groupby(["model", "features"])):
            curves = np.stack([np.array(r.split(","), float) for r in rows["top1_over_time"]])
            times = np.array(rows["times"].iloc[0].split(","), float)
            ax.plot(times, curves.mean(0), color=f"C{n}", label=f"{model} · {feats}")
            for c in curves:
                ax.plot(times, c, color=f"C{n}", alpha=0.25, lw=0.7)
        ax.axhline(timed["top1_chance"].mean(), color="k", ls="--", lw=1, label="chance")
        ax.axvline(0, color="0.6", lw=0.8)
        if truth_window is not None:
            ax.axvspan(*truth_window, color="tab:green", alpha=0.12, lw=0,
                       label="true information window")  # fmt: skip
        ax.set_xlabel("time from image onset (s)")
        ax.set_ylabel(f"zero-shot top-1 ({int(timed['n_way'].iloc[0])}-way)")
        ax.legend(frameon=False, fontsize=8)
        ax.spines[["top", "right"]].set_visible(False)
        ax.set_title("Time-resolved decoding (thin lines: subjects)")
        caption = ("Top-1 identification of the test images from each time point (ridge on "
                   "the channels at that time), against chance.")  # fmt: skip
        if truth_window is not None and "peak_time_s" in timed:
            peaks = timed["peak_time_s"].dropna()
            inside = peaks.between(*truth_window).sum()
            caption += (
                f" Synthetic world: the stimulus information lies in {truth_window[0]:.2f}-"
                f"{truth_window[1]:.2f} s (shaded, the generator's truth); {inside} of "
                f"{len(peaks)} subjects' accuracy peaks fall inside it."
            )
        figs.append((fig, "Time-resolved decoding", caption, "meeg_time_resolved"))
    fig, axes = plt.subplots(
        1, 2, figsize=(9, 0.9 + 0.5 * max(1, table.groupby(["model", "features"]).ngroups))
    )
    for ax, key in zip(axes, ("top1", "top5"), strict=True):
        labels = []
        for n, ((model, feats), rows) in enumerate(table.groupby(["model", "features"])):
            labels.append(f"{model} · {feats}")
            ax.barh(n, rows[key].mean(), color=f"C{n}")
            ax.scatter(rows[key], np.full(len(rows), n), s=10, color="k", zorder=2)
        ax.axvline(table[f"{key}_chance"].mean(), color="k", ls="--", lw=1)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_title(f"{key} ({int(table['n_way'].iloc[0])}-way)")
    axes[0].invert_yaxis()
    caption = ("Among the test images (concepts never seen in training); dashed: chance; "
               "dots: subjects.")  # fmt: skip
    figs.append((fig, "Zero-shot retrieval", caption, "meeg_retrieval"))
    if predictions and images:
        from brainpipe.report.page import GRID_QUERIES
        from brainpipe.report.retrieval import retrieval_grid_figure

        done = set()
        for (subject, model, feats), (pred_path, feat_path) in sorted(predictions.items()):
            if (model, feats) in done:
                continue
            ranked = retrieval_ranking(pred_path, feat_path, GRID_QUERIES)
            if not all(s in images for q, c in ranked for s in [q, *c]):
                log.warning("retrieval grid of %s skipped: some images are not files", model)
                continue
            done.add((model, feats))
            n_way = len(open_zarr(pred_path)["stimulus"])
            figs.append((
                retrieval_grid_figure(ranked, images, "test image"),
                f"Retrieved images: {model} · {feats}",
                f"sub-{subject}: {GRID_QUERIES} test images (left, a seeded draw) and the 5 of "
                f"the {n_way} test images whose true embeddings are most similar to the one "
                "decoded from the EEG, best first; the correct image is framed green.",
                f"retrieval_{model}-{feats}",
            ))  # fmt: skip

    def png(fig) -> bytes:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        return buf.getvalue()

    rendered = [(png(f), h, c, name) for f, h, c, name in figs]
    if figures_dir is not None:
        from brainpipe.storage import atomic_path

        with atomic_path(Path(figures_dir)) as tmp:
            tmp.mkdir(parents=True)
            for data, _, _, name in rendered:
                (tmp / f"{name}.png").write_bytes(data)

    cols = [c for c in ["subject", "model", "features", "n_way", "n_test_stimuli", "top1",
                        "top1_ci_low", "top1_ci_high", "top1_chance", "top5", "top5_ci_low",
                        "top5_ci_high", "top5_chance", "peak_time_s"] if c in table]  # fmt: skip
    sections = "\n".join(
        f"<h2>{html.escape(h)}</h2>\n"
        f'<figure id="{name}"><img src="data:image/png;base64,{base64.b64encode(data).decode()}"/>'
        f"<figcaption>{html.escape(c)}</figcaption></figure>"
        for data, h, c, name in rendered
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}}
table{{border-collapse:collapse;font-size:0.85em}}td,th{{padding:2px 8px;text-align:right}}
figcaption{{font-size:0.85em;color:#555}}</style></head><body>
<h1>{html.escape(title)}</h1>
{paper_vs_run(table, ReportInputs(recipe=recipe, run=run or {}))}
{sections}
<h2>Per subject</h2>
<div style="overflow-x:auto">
{table[cols].to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0, na_rep="–")}
</div>
</body></html>
"""
    return write_text_atomic(page, out_html)
