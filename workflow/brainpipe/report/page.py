"""The HTML report: ROI × model accuracy against the noise ceiling, per subject.

Figures are PNGs embedded in one self-contained HTML file, so the report can be
mailed or archived as is.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from brainpipe import __version__  # noqa: E402
from brainpipe.storage import write_text_atomic  # noqa: E402


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _encoding(summary: pd.DataFrame) -> pd.DataFrame:
    if "kind" not in summary:
        return summary
    return summary[summary["kind"] == "encoding"]


def _decoding(summary: pd.DataFrame) -> pd.DataFrame:
    if "kind" not in summary:
        return summary.iloc[:0]
    return summary[summary["kind"] == "decoding"]


def retrieval_vs_chance_figure(summary: pd.DataFrame) -> plt.Figure:
    """Bars: top-1, top-5 retrieval and 2-way identification per decoder (mean over
    subjects, dots are subjects), each against its chance level (dashed line).

    Baselines trained inside a decoder's job (``<name>_top1`` columns, e.g. the shared
    backbone's per-subject baselines on the same limited data) appear as their own bars.
    """
    rows = []
    for _, row in summary.iterrows():
        label = f"{row['model']} · {row['features']} · {row['roi']}"
        rows.append((label, row, ""))
        for col in summary.columns:
            if col.endswith("_top1") and not col.startswith("top") and pd.notna(row[col]):
                base = col[: -len("_top1")]
                rows.append((f"{label} [{base}, same data]", row, f"{base}_"))
    labels = list(dict.fromkeys(r[0] for r in rows))
    metrics = [("top1", "top-1"), ("top5", "top-5"), ("two_way", "2-way")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 0.9 + 0.45 * len(labels)), sharey=True)
    for ax, (key, title) in zip(axes, metrics, strict=True):
        for n, label in enumerate(labels):
            values = [r[1][f"{r[2]}{key}"] for r in rows if r[0] == label]
            ax.barh(n, np.mean(values), color=f"C{n % 10}", height=0.7)
            ax.scatter(values, np.full(len(values), n), s=10, color="k", zorder=2)
        chance = summary[f"{key}_chance"].mean()
        ax.axvline(chance, color="k", ls="--", lw=1)
        ax.text(chance, -0.9, f"chance {chance:.2f}", fontsize=7, ha="left")
        ax.set_xlim(0, 1)
        ax.set_title(title)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_yticks(range(len(labels)), labels, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle("Decoding: retrieval among the test stimuli against chance")
    return fig


def accuracy_vs_ceiling_figure(summary: pd.DataFrame) -> plt.Figure:
    """Grouped bars: explained variance (r², %) per ROI and model, with the noise ceiling.

    Bars are means over subjects, dots are subjects, and the grey band behind
    each ROI is the mean noise ceiling of its test responses.
    """
    summary = summary.assign(label=summary["model"] + " · " + summary["features"])
    rois = list(dict.fromkeys(summary["roi"]))
    labels = list(dict.fromkeys(summary["label"]))
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(rois), 3.6))
    for n, roi in enumerate(rois):
        ceiling = summary.loc[summary["roi"] == roi, "mean_noise_ceiling"].mean()
        ax.bar(
            n, ceiling, width=0.9, color="0.88", zorder=0, label="noise ceiling" if n == 0 else None
        )
        for m, label in enumerate(labels):
            rows = summary[(summary["roi"] == roi) & (summary["label"] == label)]
            x = n - 0.4 + width * (m + 0.5)
            ax.bar(
                x,
                rows["mean_r2_percent"].mean(),
                width=width * 0.9,
                color=f"C{m}",
                label=label if n == 0 else None,
                zorder=1,
            )
            ax.scatter(np.full(len(rows), x), rows["mean_r2_percent"], s=10, color="k", zorder=2)
    ax.set_xticks(range(len(rois)), rois)
    ax.set_ylabel("test variance explained (r², %)")
    ax.set_title("Encoding accuracy against the noise ceiling")
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def score_heatmap_figure(summary: pd.DataFrame) -> plt.Figure:
    """Heatmap of the noise-ceiling-normalised score (%), ROI × model, mean over subjects."""
    table = summary.assign(label=summary["model"] + " · " + summary["features"]).pivot_table(
        index="label", columns="roi", values="mean_score", aggfunc="mean"
    )
    table = table[list(dict.fromkeys(summary["roi"]))]
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * table.shape[1], 0.9 + 0.5 * table.shape[0]))
    im = ax.imshow(table.to_numpy(), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(table.shape[1]), table.columns)
    ax.set_yticks(range(table.shape[0]), table.index)
    for (i, j), value in np.ndenumerate(table.to_numpy()):
        ax.text(
            j,
            i,
            f"{value:.0f}",
            ha="center",
            va="center",
            color="w" if value < 60 else "k",
            fontsize=9,
        )
    fig.colorbar(im, ax=ax, label="% of noise ceiling")
    ax.set_title("Noise-ceiling-normalised score")
    return fig


def write_report(summary_tsv: str | Path, out_html: str | Path, title: str) -> Path:
    """Write the self-contained HTML report for one dataset's ``summary.tsv``."""
    summary = pd.read_csv(summary_tsv, sep="\t", dtype={"subject": str})
    decoding = _decoding(summary)
    summary = _encoding(summary)
    figures = [
        (
            accuracy_vs_ceiling_figure(summary),
            "Mean test r² per ROI and model (bars; dots are subjects) against the noise ceiling "
            "(grey) of the test responses averaged over their repeats.",
        ),
        (
            score_heatmap_figure(summary),
            "Score = 100 · r² / noise ceiling, r clipped at 0 (Algonauts 2023), averaged over "
            "voxels and subjects.",
        ),
    ]
    if len(decoding):
        figures.append(
            (
                retrieval_vs_chance_figure(decoding),
                "Decoders: fraction of test stimuli whose own embedding is the most similar "
                "(top-1) or among the 5 most similar (top-5) of all test stimuli' embeddings, "
                "and 2-way identification; dashed lines are chance (1/n, 5/n, 0.5).",
            )
        )
    sections = "\n".join(
        f'<figure><img src="data:image/png;base64,{_png(fig)}"/>'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for fig, caption in figures
    )
    columns = [
        "subject",
        "roi",
        "model",
        "features",
        "n_voxels",
        "n_test_stimuli",
        "mean_r",
        "mean_r2_percent",
        "mean_noise_ceiling",
        "mean_score",
    ]
    table = summary[[c for c in columns if c in summary]].to_html(
        index=False, float_format=lambda v: f"{v:.3f}", border=0
    )
    if len(decoding):
        dcols = [
            "subject",
            "roi",
            "model",
            "features",
            "n_voxels",
            "n_test_stimuli",
            "top1",
            "top1_ci_low",
            "top1_ci_high",
            "top1_chance",
            "top5",
            "top5_chance",
            "two_way",
        ]
        dcols += [c for c in decoding if c.endswith(("_top1", "_two_way")) and c[:3] != "top"]
        table += "\n<h2>Decoding, per subject</h2>\n" + decoding[
            [c for c in dcols if c in decoding]
        ].to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}}
table{{border-collapse:collapse;font-size:0.85em}}td,th{{padding:2px 8px;text-align:right}}
tr:nth-child(even){{background:#f4f4f4}}figcaption{{font-size:0.85em;color:#555}}</style>
</head><body>
<h1>{html.escape(title)}</h1>
<p>brainpipe {__version__}: {summary["subject"].nunique()} subjects,
{summary["roi"].nunique()} ROIs, {summary["features"].nunique()} feature models.</p>
{sections}
<h2>Per subject</h2>
{table}
</body></html>
"""
    return write_text_atomic(page, out_html)
