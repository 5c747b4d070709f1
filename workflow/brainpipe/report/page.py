"""The HTML report: one self-contained page, and each figure as a PNG of its own.

The page opens with "paper vs this run" when the config is a recipe, then (synthetic
dataset) the estimates against the ground truth, encoding accuracy per ROI × model against
the noise ceiling, normalised scores, brain maps, decoding against chance and retrieval
grids. Figures are embedded as PNGs so the page can be mailed or archived as is; the same
PNGs go to a folder that ``snakemake --report`` bundles with their provenance.
"""

from __future__ import annotations

import base64
import html
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from brainpipe import __version__  # noqa: E402
from brainpipe.report.brainmaps import score_maps_figure  # noqa: E402
from brainpipe.report.figures import (  # noqa: E402
    aligned_decoding_figure,
    aligned_encoding_figure,
    alignment_figure,
    decoding_figure,
    encoding_accuracy_figure,
    reconstruction_grid_figure,
    roi_order,
    score_heatmap_figure,
    timeseries_matching_figure,
)
from brainpipe.report.recipe import compare  # noqa: E402
from brainpipe.report.retrieval import retrieval_grid_figure, top_k  # noqa: E402
from brainpipe.report.truth import truth_table  # noqa: E402
from brainpipe.storage import atomic_path, open_zarr, write_text_atomic  # noqa: E402

log = logging.getLogger(__name__)

DPI = 110
#: Test stimuli shown per retrieval grid.
GRID_QUERIES = 6
#: Attributes of a scores store that say which job wrote it.
SCORE_LABELS = ("subject", "roi", "model", "features", "kind")


@dataclass
class ReportInputs:
    """What the report reads besides ``summary.tsv``.

    Attributes
    ----------
    scores : list of path
        Every evaluate job's ``scores.zarr`` (labels come from their attrs).
    betas : dict of subject -> path
        Betas stores (their grid draws the brain maps; synthetic: compared with the truth).
    dataset : str
        Registry name.
    data_dir : path or None
        Raw dataset root (synthetic ground truth; stimulus images for retrieval grids).
    stimulus_images : dict of stimulus id -> image path
        Empty where the dataset's images are not files (no grids then).
    recipe : dict or None
        The config's ``recipe`` block.
    run : dict
        What this run used, for the "paper vs this run" table (dataset, split, subjects).
    align_scores : path or None
        ``align/crosssubject.tsv`` (:mod:`brainpipe.align.crosssubject`).
    align_encoding : path or None
        ``align/encoding.tsv`` (:mod:`brainpipe.align.encoding`): encoding models fitted in
        each aligned space, scored on their own and on the other subjects.
    align_decoding : path or None
        ``align/decoding.tsv`` (:mod:`brainpipe.align.decoding`): decoders fitted in each
        aligned space, scored on their own and on the other subjects.
    timeseries_scores : path or None
        ``timeseries/matching.tsv`` (:mod:`brainpipe.align.timeseries_jobs`).
    reconstructions : list of path
        ``generate/sub-*/*/reconstructions.zarr`` (:mod:`brainpipe.generate.jobs`).
    """

    scores: list[str | Path] = field(default_factory=list)
    betas: dict[str, str | Path] = field(default_factory=dict)
    dataset: str = ""
    data_dir: str | Path | None = None
    stimulus_images: dict[str, Path] = field(default_factory=dict)
    recipe: dict[str, Any] | None = None
    run: dict[str, Any] = field(default_factory=dict)
    align_scores: str | Path | None = None
    align_encoding: str | Path | None = None
    align_decoding: str | Path | None = None
    timeseries_scores: str | Path | None = None
    reconstructions: list[str | Path] = field(default_factory=list)


@dataclass
class Figure:
    """A figure of the report: its file name, category and caption."""

    name: str
    category: str
    caption: str
    png: bytes


def _render(fig: plt.Figure) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _table(frame: pd.DataFrame) -> str:
    # counts (n_*) print as integers: a column that is empty on some summary rows (aligned
    # decoders have no voxel count) is float in pandas and would print 67.000
    counts = [c for c in frame.columns if str(c).startswith("n_") and frame[c].dtype.kind == "f"]
    frame = frame.astype({c: "Int64" for c in counts if (frame[c].dropna() % 1 == 0).all()})
    # wide tables (the per-subject ones) scroll inside the page instead of running past it
    html = frame.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0, na_rep="–")
    return f'<div style="overflow-x:auto">\n{html}\n</div>'


def _score_stores(paths: list[str | Path]) -> pd.DataFrame:
    rows = []
    for path in paths:
        attrs = open_zarr(path).attrs
        labels = {k: str(attrs.get(k, "")) for k in SCORE_LABELS}
        rows.append({**labels, "path": str(path)})
    return pd.DataFrame(rows, columns=[*SCORE_LABELS, "path"])


def encoding_figures(summary: pd.DataFrame, inputs: ReportInputs) -> list[Figure]:
    """Accuracy against the noise ceiling, normalised scores and brain maps (encoders)."""
    if summary.empty:
        return []
    figures = [
        Figure(
            "encoding_accuracy",
            "Encoding",
            "Test squared correlation r² (%, r clipped at 0, mean over the ROI's voxels) per "
            "ROI and model: bars are means over subjects, dots are subjects with their 95 % "
            "bootstrap CIs (test stimuli resampled). The grey band spans the subjects' noise "
            "ceilings (% of variance explainable given the test repeats); grey ticks mark each "
            "subject's own. R² (coefficient of determination) is in the table as mean_r2.",
            _render(encoding_accuracy_figure(summary)),
        ),
        Figure(
            "score_heatmap",
            "Encoding",
            "Noise-ceiling-normalised score = 100 · r² / noise ceiling (r clipped at 0, "
            "capped at 100; the Algonauts 2023 definition), averaged over voxels and "
            "subjects. 'not run': the model is not configured for that ROI.",
            _render(score_heatmap_figure(summary)),
        ),
    ]
    stores = _score_stores(inputs.scores)
    stores = stores[stores["kind"] == "encoding"]
    if stores.empty:
        return figures
    # The model to map: the best mean score among those evaluated on the most ROIs.
    coverage = stores.groupby(["model", "features"])["roi"].nunique()
    widest = coverage[coverage == coverage.max()].index
    means = summary.groupby(["model", "features"])["mean_score"].mean()
    model, features = means[means.index.isin(widest)].sort_values().index[-1]
    mine = stores[(stores["model"] == model) & (stores["features"] == features)]
    paths = {s: list(g["path"]) for s, g in mine.groupby("subject")}
    label = f"{model} · {features}"
    fig = score_maps_figure(paths, inputs.betas, label)
    if fig is not None:
        figures.append(
            Figure(
                "brainmaps",
                "Brain maps",
                f"{label} (the best mean score among the models evaluated on every ROI): "
                "per-voxel test correlation r (left) and noise ceiling (% variance, right) "
                "per subject, on the subject's grid (axial slices; glass brain in MNI space; "
                "fsaverage5 lateral views for surface data), over the voxels of the ROIs "
                f"evaluated ({', '.join(roi_order(mine['roi']))}).",
                _render(fig),
            )
        )
    return figures


def decoding_figures(summary: pd.DataFrame, inputs: ReportInputs) -> list[Figure]:
    """Retrieval against chance, and retrieval grids where stimulus images are files."""
    if summary.empty:
        return []
    figures = [
        Figure(
            "decoding_retrieval",
            "Decoding",
            "Decoders: fraction of test stimuli whose own embedding is the most similar "
            "(top-1) or among the 5 most similar (top-5) of the candidates (all test "
            "stimuli), and 2-way identification. Bars: means over subjects; dots: subjects "
            "with their 95 % bootstrap CIs; dashed: chance (1/n, 5/n, 0.5). Baselines "
            "trained in another model's job on the same data are labelled so.",
            _render(decoding_figure(summary)),
        )
    ]
    stores = _score_stores(inputs.scores)
    stores = stores[stores["kind"] == "decoding"].sort_values(["model", "features", "subject"])
    if stores.empty or not inputs.stimulus_images:
        return figures
    for (model, features), group in stores.groupby(["model", "features"], sort=True):
        first = group.iloc[0]  # one subject and ROI per decoder keeps the page short
        ranked = top_k(first["path"], GRID_QUERIES)
        if not all(s in inputs.stimulus_images for q, c in ranked for s in [q, *c]):
            log.warning("retrieval grid of %s skipped: some stimulus images are not files", model)
            continue
        figures.append(
            Figure(
                f"retrieval_{model}-{features}",
                "Decoding",
                f"{model} · {features}, sub-{first['subject']}, {first['roi']}: "
                f"{GRID_QUERIES} test images (left, a seeded draw) and the 5 test images "
                "whose true embeddings are most similar to the decoded one, best first; the "
                "correct image is framed green.",
                _render(retrieval_grid_figure(ranked, inputs.stimulus_images, "test image")),
            )
        )
    return figures


def _pair_scores(path: str | Path | None) -> pd.DataFrame | None:
    """A source x target score table of the align stage (subject labels kept as text), or
    None when the stage did not run or scored nothing."""
    if path is None:
        return None
    scores = pd.read_csv(path, sep="\t", dtype={"source": str, "target": str})
    return None if scores.empty else scores


def alignment_figures(inputs: ReportInputs) -> list[Figure]:
    """Cross-subject prediction per alignment method (fit on one subject, predict another)."""
    scores = _pair_scores(inputs.align_scores)
    if scores is None:
        return []
    n = int(scores["n_test_stimuli"].median())
    return (
        [
            Figure(
                "alignment_crosssubject",
                "Alignment",
                "Cross-subject prediction: each subject's test responses predicted from another "
                "subject's through the shared space of each alignment method (fitted on shared "
                "training stimuli only), correlated voxel by voxel with the target's own test "
                f"responses (median {n} test stimuli per pair). Bars: mean over ordered subject "
                "pairs; dots: pairs.",
                _render(alignment_figure(scores)),
            )
        ]
        + aligned_encoding_figures(inputs)
        + aligned_decoding_figures(inputs)
    )


def aligned_encoding_figures(inputs: ReportInputs) -> list[Figure]:
    """Encoding models fitted in an aligned space: own subject vs the other subjects."""
    scores = _pair_scores(inputs.align_encoding)
    if scores is None:
        return []
    n = int(scores["n_test_stimuli"].median())
    return [
        Figure(
            "alignment_encoding",
            "Alignment",
            "Encoding models in the aligned space: per alignment method and feature model, a "
            "ridge model maps the features to one subject's shared-space training responses; "
            "its test predictions are mapped into the voxels of the same subject (within) and "
            "of every other subject (cross: fit on one subject, predict another), and "
            f"correlated voxel by voxel with the measured test responses (median {n} test "
            "stimuli). Bars: mean over subjects / ordered pairs; dots: each.",
            _render(aligned_encoding_figure(scores)),
        )
    ]


def aligned_decoding_figures(inputs: ReportInputs) -> list[Figure]:
    """Decoders fitted in an aligned space: own subject vs the other subjects."""
    scores = _pair_scores(inputs.align_decoding)
    if scores is None:
        return []
    n = int(scores["n_test_stimuli"].median())
    return [
        Figure(
            "alignment_decoding",
            "Alignment",
            "Decoders in the aligned space: per alignment method, registered decoder "
            "(align.decoding_models) and feature model, the decoder is fitted on one "
            "subject's shared-space training responses to the stimulus features; it "
            "decodes the shared-space test responses of the same subject "
            "(within) and of every other subject (cross: fit on one subject, decode another), "
            f"and each decoded vector is matched against the true features of all {n} test "
            "stimuli (median per subject). Left: top-1 identification among them; right: "
            "2-way identification. Dashed: chance. Bars: mean over subjects / ordered pairs; "
            "dots: each.",
            _render(aligned_decoding_figure(scores)),
        )
    ]


def timeseries_figures(inputs: ReportInputs) -> list[Figure]:
    """Time-segment matching per shared-response-over-time method (held-out subjects)."""
    if inputs.timeseries_scores is None:
        return []
    table = pd.read_csv(inputs.timeseries_scores, sep="\t", dtype={"subject": str})
    if table.empty:
        return []
    first = table.iloc[0]
    recovery = ""
    if "latent_cc_mean" in table:
        per_method = table.groupby("method")["latent_cc_mean"].mean()
        recovery = (
            " Synthetic movie: mean canonical correlation of the test shared response with "
            "the true latents " + ", ".join(f"{m} {v:.2f}" for m, v in per_method.items()) + "."
        )
    return [
        Figure(
            "timeseries_matching",
            "Alignment",
            "Shared response over time: each subject held out in turn, the method fitted on "
            f"the others' first {int(first['n_train'])} time points, the held-out subject "
            "mapped in from its own training time points; each of its "
            f"{int(first['n_segments'])} test segments of {int(first['window'])} time points "
            "identified among the non-overlapping segments of the others' average shared "
            f"response. Dashed: chance ({float(table['chance'].mean()):.4f}). Bars: mean "
            "over held-out subjects; dots: subjects." + recovery,
            _render(timeseries_matching_figure(table)),
        )
    ]


def generation_figures(inputs: ReportInputs) -> list[Figure]:
    """Test stimuli and the images generated from each subject × ROI's decoded latents."""
    import json

    figures = []
    for path in inputs.reconstructions:
        store = open_zarr(path)
        metrics = json.loads((Path(path).parent / "metrics.json").read_text())
        subject, roi = store.attrs.get("subject", "?"), store.attrs.get("roi", "?")
        extra = "".join(
            f", two-way {k[len('two_way_') :]} {v:.2f}"
            for k, v in metrics.items()
            if k.startswith("two_way_") and k not in ("two_way_pixel", "two_way_chance")
        )
        figures.append(
            Figure(
                f"generated_sub-{subject}_{roi}",
                "Generation",
                f"sub-{subject}, {roi}: test stimuli (top) and the images the generator "
                "made from latents decoded from the brain responses (bottom). Over all "
                f"{metrics['n_test']} test stimuli: PixCorr {metrics['pixcorr']:.2f} "
                f"(other stimuli {metrics['pixcorr_other']:.2f}), SSIM {metrics['ssim']:.2f}, "
                f"two-way pixel {metrics['two_way_pixel']:.2f}{extra} (chance 0.5).",
                _render(
                    reconstruction_grid_figure(store["true_image"].values, store["image"].values)
                ),
            )
        )
    return figures


def paper_vs_run(summary: pd.DataFrame, inputs: ReportInputs) -> str:
    """The "paper vs this run" section of a recipe ('' when the config is no recipe)."""
    recipe = inputs.recipe
    if not recipe:
        return ""
    rows = [
        {
            "reported number": c.label,
            "definition": c.definition,
            "paper": c.paper,
            "this run": c.ours,
            "95 % CI": f"[{c.ci_low:.3f}, {c.ci_high:.3f}]",
            "rows (subjects) averaged": c.n_rows,
            "summary rows": c.scope,
            "source of the paper's number": c.source or "–",
        }
        for c in compare(summary, recipe)
    ]
    used = inputs.run
    differs = recipe.get("differences", [])
    if used.get("dataset") != recipe.get("dataset"):
        differs = [
            f"dataset: this run used {used.get('dataset')!r}, a stand-in for "
            f"{recipe.get('dataset')!r}; numbers are not comparable in "
            "value, only in their order and distance from chance",
            *differs,
        ]
    items = "".join(f"<li>{html.escape(str(d))}</li>" for d in differs)
    cite = html.escape(recipe.get("citation", ""))
    url = recipe.get("url")
    link = f' (<a href="{html.escape(url)}">{html.escape(url)}</a>)' if url else ""
    return f"""<h2>Paper vs this run: {html.escape(recipe.get("name", ""))}</h2>
<p>{cite}{link}</p>
<p>This run: dataset <b>{html.escape(str(used.get("dataset")))}</b>, subjects
{html.escape(", ".join(used.get("subjects", [])))}, split: {html.escape(str(used.get("split")))}.
Our CI is the mean of the per-subject 95 % bootstrap bounds.</p>
{_table(pd.DataFrame(rows))}
<p>What differs:</p><ul>{items or "<li>nothing declared</li>"}</ul>
"""


def truth_section(inputs: ReportInputs, rois: list[str]) -> str:
    """Synthetic dataset: betas and noise ceilings against the generator's truth."""
    if inputs.dataset != "synthetic" or not inputs.betas or inputs.data_dir is None:
        return ""
    table = truth_table(inputs.betas, inputs.data_dir, rois)
    if table.empty:
        return ""
    return (
        "<h2>Against the ground truth (synthetic dataset)</h2>\n<p>Correlation of the "
        "estimated single-trial betas with the generator's true amplitudes over the ROI's "
        "trials and voxels, and the estimated single-trial noise ceiling beside the true "
        "one.</p>\n" + _table(table)
    )


def write_report(
    summary_tsv: str | Path,
    out_html: str | Path,
    title: str,
    inputs: ReportInputs | None = None,
    figures_dir: str | Path | None = None,
) -> Path:
    """Write the self-contained HTML report (and each figure as a PNG in ``figures_dir``).

    Parameters
    ----------
    summary_tsv : path
        The tidy summary (:func:`brainpipe.models.summary.collect_summary`).
    out_html : path
        Written atomically.
    title : str
    inputs : ReportInputs, optional
        Scores, betas, images and recipe; without them only the summary figures are drawn.
    figures_dir : path, optional
        Where each figure also goes as ``<name>.png`` (for ``snakemake --report``).
    """
    inputs = inputs or ReportInputs()
    summary = pd.read_csv(summary_tsv, sep="\t", dtype={"subject": str, "baseline_of": str})
    summary["baseline_of"] = summary.get("baseline_of", pd.Series(dtype=str)).fillna("")
    if "space" in summary:  # aligned decoders' rows: drawn from align/decoding.tsv
        summary = summary[summary["space"].fillna("native") == "native"]
    kind = summary["kind"] if "kind" in summary else pd.Series("encoding", index=summary.index)
    encoding, decoding = summary[kind == "encoding"], summary[kind == "decoding"]
    figures = (
        encoding_figures(encoding, inputs)
        + decoding_figures(decoding, inputs)
        + alignment_figures(inputs)
        + timeseries_figures(inputs)
        + generation_figures(inputs)
    )
    rois = roi_order(summary["roi"])
    sections = "\n".join(
        f'<figure id="{f.name}"><img src="data:image/png;base64,'
        f'{base64.b64encode(f.png).decode()}"/>'
        f"<figcaption>{html.escape(f.caption)}</figcaption></figure>"
        for f in figures
    )
    if figures_dir is not None:
        with atomic_path(figures_dir) as tmp:
            tmp.mkdir(parents=True)
            for f in figures:
                (tmp / f"{f.name}.png").write_bytes(f.png)
    features = sorted({f for value in summary["features"] for f in str(value).split("+")})
    enc_cols = [
        "subject",
        "roi",
        "model",
        "features",
        "n_voxels",
        "n_train_trials",
        "n_test_stimuli",
        "mean_r",
        "mean_r_ci_low",
        "mean_r_ci_high",
        "mean_r2",
        "mean_r2_percent",
        "mean_noise_ceiling",
        "mean_score",
    ]
    dec_cols = [
        "subject",
        "roi",
        "model",
        "baseline_of",
        "features",
        "n_voxels",
        "n_train_trials",
        "n_candidates",
        "top1",
        "top1_ci_low",
        "top1_ci_high",
        "top1_chance",
        "top5",
        "top5_chance",
        "two_way",
        "mean_dim_r",
    ]
    tables = ""
    if len(encoding):
        tables += "<h2>Encoding, per subject</h2>\n" + _table(
            encoding[[c for c in enc_cols if c in encoding]]
        )
    if len(decoding):
        tables += "\n<h2>Decoding, per subject</h2>\n" + _table(
            decoding[[c for c in dec_cols if c in decoding]]
        )
    n_models = summary[summary["baseline_of"] == ""]["model"].nunique()
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:64em;margin:2em auto;color:#222;padding:0 1em}}
img{{max-width:100%;height:auto}}
table{{border-collapse:collapse;font-size:0.85em}}td,th{{padding:2px 8px;text-align:right}}
tr:nth-child(even){{background:#f4f4f4}}figcaption{{font-size:0.85em;color:#555}}</style>
</head><body>
<h1>{html.escape(title)}</h1>
<p>brainpipe {__version__}: {summary["subject"].nunique()} subjects, {len(rois)} ROIs
({html.escape(", ".join(rois))}), {n_models} models, {len(features)} feature models
({html.escape(", ".join(features))}).</p>
{paper_vs_run(summary, inputs)}
{truth_section(inputs, rois)}
{sections}
{tables}
</body></html>
"""
    return write_text_atomic(page, out_html)
