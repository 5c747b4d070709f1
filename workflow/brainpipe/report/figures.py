"""Figures drawn from ``summary.tsv``: encoding accuracy, normalised scores, decoding.

Every figure is sized for a page about 1,000 px wide (``PAGE_WIDTH_IN`` at the report's
dpi), so nothing is cut off in a browser; titles live in the report's captions, not in a
suptitle that could overprint the panels.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

#: Width of every figure, inches (at the report's 110 dpi: ~990 px).
PAGE_WIDTH_IN = 9.0

#: Visual hierarchy, early to late: ROIs are shown in this order, others after, sorted.
ROI_HIERARCHY = [
    "V1", "V1v", "V1d", "V2", "V2v", "V2d", "V3", "V3v", "V3d", "hV4", "V4", "VO", "VO1",
    "VO2", "V3ab", "LO", "LO1", "LO2", "LOC", "TO", "MT", "IPS", "OPA", "PPA", "RSC",
    "OFA", "FFA", "FFA-1", "FFA-2", "EBA", "FBA", "VWFA", "nsdgeneral", "all",
]  # fmt: skip


def roi_order(rois) -> list[str]:
    """``rois`` (unique) in visual-hierarchy order; unknown names after, alphabetically."""
    rank = {name: n for n, name in enumerate(ROI_HIERARCHY)}
    unique = list(dict.fromkeys(rois))
    return sorted(unique, key=lambda r: (rank.get(r, len(rank)), r))


def model_label(row: pd.Series) -> str:
    """``model · features``, with ``(in <job>)`` for a baseline trained inside another job."""
    label = f"{row['model']} · {row['features']}"
    baseline_of = row.get("baseline_of", "")
    if isinstance(baseline_of, str) and baseline_of:
        label += f" (same data, in {baseline_of})"
    return label


def _labelled(summary: pd.DataFrame) -> pd.DataFrame:
    return summary.assign(label=summary.apply(model_label, axis=1))


def _ci(rows: pd.DataFrame, metric: str) -> np.ndarray | None:
    """Whisker lengths (below, above) of each row's bootstrap CI around its estimate.

    A percentile interval need not contain the estimate (a biased statistic such as r² from
    few test stimuli: resampled stimuli repeat, which inflates r); the whisker on the side
    the estimate lies outside is then drawn as zero, never negative.
    """
    low, high = f"{metric}_ci_low", f"{metric}_ci_high"
    if low not in rows or high not in rows:
        return None
    values = rows[metric].to_numpy(float)
    whiskers = np.vstack([values - rows[low].to_numpy(float), rows[high].to_numpy(float) - values])
    return np.clip(whiskers, 0.0, None)


def encoding_accuracy_figure(summary: pd.DataFrame) -> plt.Figure:
    """Bars per ROI × model: test squared correlation (r², %), with the noise ceiling.

    Bars are means over subjects; each dot is a subject, its whisker that subject's 95 %
    bootstrap CI (test stimuli resampled). The grey band behind an ROI spans the subjects'
    noise ceilings (min to max) and the grey tick on each dot's column is that subject's own
    ceiling, so no dot sits above an average that hides its subject's ceiling.
    """
    table = _labelled(summary)
    rois = roi_order(table["roi"])
    colours = {label: f"C{m % 10}" for m, label in enumerate(dict.fromkeys(table["label"]))}
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH_IN, 4.0))
    in_legend: set[str] = set()
    for n, roi in enumerate(rois):
        at_roi = table[table["roi"] == roi]
        ceilings = at_roi.groupby("subject")["mean_noise_ceiling"].mean()
        band = "noise ceiling (range over subjects)"
        ax.bar(
            n,
            ceilings.max() - ceilings.min(),
            bottom=ceilings.min(),
            width=0.92,
            color="0.85",
            zorder=0,
            label=None if band in in_legend else band,
        )
        in_legend.add(band)
        labels = list(dict.fromkeys(at_roi["label"]))  # only the models run on this ROI
        width = 0.8 / len(labels)
        for m, label in enumerate(labels):
            rows = at_roi[at_roi["label"] == label]
            x = n - 0.4 + width * (m + 0.5)
            ax.bar(
                x,
                rows["mean_r2_percent"].mean(),
                width=width * 0.9,
                color=colours[label],
                label=None if label in in_legend else label,
                zorder=1,
            )
            in_legend.add(label)
            jitter = np.linspace(-0.25, 0.25, len(rows)) * width if len(rows) > 1 else [0.0]
            xs = x + np.asarray(jitter)
            ax.errorbar(
                xs,
                rows["mean_r2_percent"],
                yerr=_ci(rows, "mean_r2_percent"),
                fmt="o",
                ms=3,
                color="k",
                elinewidth=0.8,
                zorder=3,
            )
            tick = "each subject's noise ceiling"
            ax.scatter(
                xs,
                rows["subject"].map(ceilings).to_numpy(float),
                marker="_",
                s=60,
                color="0.4",
                zorder=2,
                label=None if tick in in_legend else tick,
            )
            in_legend.add(tick)
    ax.set_xticks(range(len(rois)), rois)
    ax.set_xlabel("ROI (early to late visual cortex)")
    ax.set_ylabel("squared correlation r² (%),\nr clipped at 0, averaged over voxels")
    ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def score_heatmap_figure(summary: pd.DataFrame) -> plt.Figure:
    """Heatmap of the noise-ceiling-normalised score (%), model × ROI, mean over subjects.

    Cells of a model not run on an ROI are left blank (marked "not run"), never "nan".
    """
    table = _labelled(summary).pivot_table(
        index="label", columns="roi", values="mean_score", aggfunc="mean"
    )
    table = table[roi_order(table.columns)]
    values = table.to_numpy(float)
    fig, ax = plt.subplots(
        figsize=(min(PAGE_WIDTH_IN, 3.5 + 1.0 * table.shape[1]), 0.9 + 0.45 * table.shape[0])
    )
    im = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_facecolor("white")
    ax.set_xticks(range(table.shape[1]), table.columns)
    ax.set_yticks(range(table.shape[0]), table.index, fontsize=8)
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            ax.text(
                j,
                i,
                f"{value:.0f}",
                ha="center",
                va="center",
                color="w" if value < 60 else "k",
                fontsize=9,
            )
        else:
            ax.text(j, i, "not run", ha="center", va="center", color="0.5", fontsize=7)
    fig.colorbar(im, ax=ax, label="% of noise ceiling")
    fig.tight_layout()
    return fig


DECODING_PANELS = [
    ("top1", "top-1 retrieval"),
    ("top5", "top-5 retrieval"),
    ("two_way", "2-way identification"),
]


def decoding_figure(summary: pd.DataFrame) -> plt.Figure:
    """Retrieval and identification per decoder, stacked panels, each against chance.

    Bars are means over subjects; dots are subjects with their 95 % bootstrap CIs. Each
    panel's axis says how many candidates a test stimulus is retrieved among; the dashed
    line is chance (``1/n``, ``5/n``, 0.5), named in the legend.
    """
    table = _labelled(summary)
    # each model, then the baselines trained in its job, under it
    table = table.assign(
        _parent=table["baseline_of"].where(table["baseline_of"] != "", table["model"])
    )
    table = table.sort_values(["_parent", "baseline_of", "model"], kind="stable")
    labels = list(dict.fromkeys(table["label"]))
    height = 0.6 + 0.32 * len(labels)
    fig, axes = plt.subplots(len(DECODING_PANELS), 1, figsize=(PAGE_WIDTH_IN, 3 * height))
    n_candidates = sorted({int(n) for n in table["n_candidates"].dropna()})
    among = "/".join(str(n) for n in n_candidates) or "?"
    for ax, (key, title) in zip(axes, DECODING_PANELS, strict=True):
        for n, label in enumerate(labels):
            rows = table[table["label"] == label]
            ax.barh(n, rows[key].mean(), color=f"C{n % 10}", height=0.7)
            ys = n + (np.linspace(-0.2, 0.2, len(rows)) if len(rows) > 1 else np.zeros(1))
            err = _ci(rows, key)
            ax.errorbar(rows[key], ys, xerr=err, fmt="o", ms=3, color="k", elinewidth=0.8)
        chance = table[f"{key}_chance"].mean()
        ax.axvline(chance, color="k", ls="--", lw=1)
        ax.set_xlim(0, 1)
        ax.set_xlabel(
            f"{title}: fraction of test stimuli, among {among} candidates "
            f"(dashed: chance {chance:.3g})"
        )
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def alignment_figure(scores: pd.DataFrame) -> plt.Figure:
    """Bars per alignment method: mean cross-subject test r over ordered subject pairs."""
    methods = list(dict.fromkeys(scores.sort_values("mean_r", ascending=False)["method"]))
    fig, ax = plt.subplots(figsize=(min(PAGE_WIDTH_IN, 2.5 + 1.1 * len(methods)), 3.4))
    for n, method in enumerate(methods):
        rows = scores[scores["method"] == method]
        ax.bar(n, rows["mean_r"].mean(), color=f"C{n % 10}", width=0.7)
        xs = n + (np.linspace(-0.2, 0.2, len(rows)) if len(rows) > 1 else np.zeros(1))
        ax.scatter(xs, rows["mean_r"], s=10, color="k", zorder=2)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(methods)), methods, rotation=20, ha="right")
    ax.set_ylabel("test r, target predicted from source\n(mean over voxels)")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def _groups(scores: pd.DataFrame) -> tuple[list[str], list[tuple]]:
    """The grouping columns of an align score table (method, model when it has one,
    feature model) and its groups in table order."""
    keys = [k for k in ("method", "model", "features") if k in scores]
    return keys, list(dict.fromkeys(zip(*(scores[k] for k in keys), strict=True)))


def _group_rows(scores: pd.DataFrame, keys: list[str], group: tuple) -> pd.DataFrame:
    return scores[np.logical_and.reduce([scores[k] == v for k, v in zip(keys, group, strict=True)])]


def _within_cross_bars(ax, scores: pd.DataFrame, metric: str) -> list[tuple]:
    """Bars of ``metric`` per (method, [model,] feature model): within- then cross-subject,
    the mean over subjects / ordered pairs, each as a dot. Returns the groups in drawing
    order."""
    keys, groups = _groups(scores)
    for g, group in enumerate(groups):
        rows = _group_rows(scores, keys, group)
        for k, (relation, colour) in enumerate((("within", "C0"), ("cross", "C1"))):
            sel = rows[rows["relation"] == relation]
            if sel.empty:
                continue
            x = g + (k - 0.5) * 0.38
            ax.bar(x, sel[metric].mean(), width=0.36, color=colour,
                   label=f"{relation}-subject" if g == 0 else None)  # fmt: skip
            xs = x + (np.linspace(-0.12, 0.12, len(sel)) if len(sel) > 1 else np.zeros(1))
            ax.scatter(xs, sel[metric], s=8, color="k", zorder=2)
    ax.set_xticks(range(len(groups)), ["\n".join(map(str, g)) for g in groups])
    ax.spines[["top", "right"]].set_visible(False)
    return groups


def aligned_encoding_figure(scores: pd.DataFrame) -> plt.Figure:
    """Grouped bars per alignment method x feature model: within- vs cross-subject test r."""
    n_groups = len(set(zip(scores["method"], scores["features"], strict=True)))
    fig, ax = plt.subplots(figsize=(min(PAGE_WIDTH_IN, 2.8 + 1.5 * n_groups), 3.4))
    _within_cross_bars(ax, scores, "mean_r")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylabel("test r in the target's voxels\n(mean over voxels)")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def aligned_decoding_figure(scores: pd.DataFrame) -> plt.Figure:
    """Per alignment method x decoder x feature model: within- vs cross-subject
    identification, top-1 among all test stimuli (left) and 2-way (right), chance dashed."""
    keys, all_groups = _groups(scores)
    width = min(PAGE_WIDTH_IN, 2 * (2.0 + 1.2 * len(all_groups)))
    fig, axes = plt.subplots(1, 2, figsize=(width, 3.4), sharey=True)
    n = int(scores["n_test_stimuli"].median())
    panels = (("top1", "top1_chance", f"top-1 among {n} test stimuli"),
              ("two_way", "two_way_chance", "2-way identification"))  # fmt: skip
    for ax, (metric, chance, title) in zip(axes, panels, strict=True):
        groups = _within_cross_bars(ax, scores, metric)
        for g, group in enumerate(groups):
            rows = _group_rows(scores, keys, group)
            ax.hlines(float(rows[chance].mean()), g - 0.45, g + 0.45, colors="k",
                      linestyles="--", lw=0.8, label="chance" if g == 0 else None)  # fmt: skip
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("identification accuracy\n(target's test stimuli)")
    axes[0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def timeseries_matching_figure(table: pd.DataFrame) -> plt.Figure:
    """Bars per shared-response-over-time method: time-segment matching accuracy of the
    held-out subjects (dots), with chance as a dashed line."""
    methods = list(dict.fromkeys(table.sort_values("accuracy", ascending=False)["method"]))
    fig, ax = plt.subplots(figsize=(min(PAGE_WIDTH_IN, 2.5 + 1.1 * len(methods)), 3.4))
    for n, method in enumerate(methods):
        rows = table[table["method"] == method]
        ax.bar(n, rows["accuracy"].mean(), color=f"C{n % 10}", width=0.7)
        xs = n + (np.linspace(-0.2, 0.2, len(rows)) if len(rows) > 1 else np.zeros(1))
        ax.scatter(xs, rows["accuracy"], s=10, color="k", zorder=2)
    ax.axhline(float(table["chance"].mean()), color="k", lw=0.8, ls="--", label="chance")
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylim(0, 1)
    ax.set_ylabel("time-segment matching\n(held-out subject, test time)")
    ax.legend(frameon=False, loc="upper right")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def reconstruction_grid_figure(true: np.ndarray, generated: np.ndarray, n: int = 8) -> plt.Figure:
    """Test stimuli (top row) above the images generated from brain responses (bottom)."""
    n = min(n, len(true))
    fig, axes = plt.subplots(2, n, figsize=(min(PAGE_WIDTH_IN, 1.1 * n), 2.4), squeeze=False)
    for col in range(n):
        for row, images in enumerate((true, generated)):
            ax = axes[row, col]
            ax.imshow(images[col], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, col].set_title(f"{col + 1}", fontsize=8)
    axes[0, 0].set_ylabel("stimulus", fontsize=8)
    axes[1, 0].set_ylabel("generated", fontsize=8)
    fig.tight_layout()
    return fig
