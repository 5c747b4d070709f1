"""Retrieval grids: each test image beside the five test images a decoder retrieved for it.

The ranking is the evaluate job's ``similarity(stimulus, candidate)`` (Pearson correlation
of the predicted with each true embedding), so the grid shows exactly what top-1/top-5
scored.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from brainpipe.report.figures import PAGE_WIDTH_IN  # noqa: E402
from brainpipe.storage import open_zarr  # noqa: E402

TOP_K = 5


def stimulus_image_files(data_dir: str | Path) -> dict[str, Path]:
    """Stimulus id -> image file, from the dataset's stimuli table; empty if it has none.

    Datasets whose images are not files (NSD keeps them in one HDF5) give an empty dict,
    and the report leaves the grids out.
    """
    from brainpipe.bids import BidsLayout, read_stimuli

    layout = BidsLayout(data_dir)
    if not layout.stimuli_table.exists():
        return {}
    table = read_stimuli(layout.stimuli_table)
    files = {
        s: layout.stimuli_dir / str(p)
        for s, p in zip(table["stimulus"], table["image"], strict=True)
    }
    return {s: p for s, p in files.items() if p.is_file()}


def top_k(scores_path: str | Path, n_queries: int, k: int = TOP_K, seed: int = 0):
    """``n_queries`` test stimuli (a seeded draw) and the ``k`` candidates ranked first.

    Returns
    -------
    list of (query, [candidates])
        Stimulus ids; candidates best first.
    """
    scores = open_zarr(scores_path)
    sim = scores["similarity"].values
    stimuli = scores["stimulus"].values.astype(str)
    candidates = scores["candidate"].values.astype(str)
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(stimuli), size=min(n_queries, len(stimuli)), replace=False))
    order = np.argsort(-sim[picked], axis=1, kind="stable")[:, :k]
    return [(stimuli[q], list(candidates[o])) for q, o in zip(picked, order, strict=True)]


def retrieval_grid_figure(
    ranked: list[tuple[str, list[str]]], images: dict[str, Path], title: str
) -> plt.Figure:
    """A row per query: the test image, then its top-5 retrieved; the correct one framed green.

    Parameters
    ----------
    ranked : list of (query, candidates)
        From :func:`top_k`.
    images : dict of stimulus id -> image path
    title : str
        Shown above the first column.
    """
    k = len(ranked[0][1])
    fig, axes = plt.subplots(
        len(ranked), k + 1, figsize=(min(PAGE_WIDTH_IN, 1.3 * (k + 1)), 1.35 * len(ranked))
    )
    axes = np.atleast_2d(axes)
    for row, (query, candidates) in enumerate(ranked):
        for col, stimulus in enumerate([query, *candidates]):
            ax = axes[row, col]
            ax.imshow(Image.open(images[stimulus]).convert("RGB"))
            ax.set_xticks([])
            ax.set_yticks([])
            hit = col > 0 and stimulus == query
            for spine in ax.spines.values():
                spine.set_edgecolor("tab:green" if hit else "0.8")
                spine.set_linewidth(3 if hit else 0.5)
            if row == 0:
                ax.set_title(title if col == 0 else f"#{col}", fontsize=8)
    fig.tight_layout()
    return fig
