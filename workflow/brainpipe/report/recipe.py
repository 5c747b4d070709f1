"""A recipe's "paper vs this run" table.

A recipe (``config/recipes/<name>.yaml``) carries a ``recipe:`` block: the paper (citation,
link), the numbers it reports with their exact definitions, and for each number the rows of
``summary.tsv`` that measure the same thing here. This module matches them and puts the
paper's figure beside ours, with a 95 % CI and what differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from brainpipe.errors import BrainpipeInputError


@dataclass(frozen=True)
class Comparison:
    """One reported number beside this run's."""

    label: str
    definition: str
    paper: float
    ours: float
    ci_low: float
    ci_high: float
    n_rows: int
    scope: str
    source: str = ""


def _select(summary: pd.DataFrame, where: dict[str, Any], key: str) -> pd.DataFrame:
    rows = summary
    for column, wanted in where.items():
        if column not in rows:
            raise BrainpipeInputError(
                "config", f"{key}.where.{column}", f"summary.tsv has no column {column!r}"
            )
        values = wanted if isinstance(wanted, list) else [wanted]
        # an empty cell (baseline_of of a model's own row) is selected by ""
        rows = rows[rows[column].fillna("").astype(str).isin([str(v) for v in values])]
    return rows


def compare(summary: pd.DataFrame, recipe: dict[str, Any]) -> list[Comparison]:
    """Match each of the recipe's ``reported`` numbers with this run's summary rows.

    Ours is the mean of the metric over the matched rows (subjects); its CI is the mean of
    the rows' own 95 % bootstrap bounds (test stimuli resampled), or the range of the rows
    when a metric has no bootstrap CI.

    Parameters
    ----------
    summary : DataFrame
        ``summary.tsv``.
    recipe : dict
        The config's ``recipe`` block.

    Returns
    -------
    list of Comparison
        In the recipe's order; ``ours`` is NaN where no row matched, ``paper`` where the
        recipe's ``value`` is null (a number the paper reports that we could not read: its
        ``source`` says so).
    """
    out = []
    for n, item in enumerate(recipe.get("reported", [])):
        key = f"recipe.reported[{n}]"
        metric = item["metric"]
        rows = _select(summary, item.get("where", {}), key)
        if len(rows) and metric not in rows:
            raise BrainpipeInputError(
                "config", f"{key}.metric", f"summary.tsv has no column {metric!r}"
            )
        values = rows[metric].to_numpy(float) if len(rows) else np.array([])
        low, high = f"{metric}_ci_low", f"{metric}_ci_high"
        if len(rows) and low in rows and high in rows and rows[low].notna().all():
            ci = (float(rows[low].mean()), float(rows[high].mean()))
        elif len(values):
            ci = (float(values.min()), float(values.max()))
        else:
            ci = (np.nan, np.nan)
        scope = ", ".join(f"{k}={v}" for k, v in item.get("where", {}).items())
        out.append(
            Comparison(
                label=item["label"],
                definition=item["definition"],
                paper=np.nan if item.get("value") is None else float(item["value"]),
                ours=float(values.mean()) if len(values) else np.nan,
                ci_low=ci[0],
                ci_high=ci[1],
                n_rows=len(rows),
                scope=scope,
                source=str(item.get("source", "")),
            )
        )
    return out
