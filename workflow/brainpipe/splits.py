"""The explicit split table: which stimuli are test and which are train.

Made once per dataset and an input to every fitting stage. The stimuli every
subject sees (NSD's shared 1000, the synthetic dataset's shared set) are the
test split, so test stimuli never enter anything that is fitted.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from brainpipe.bids import read_stimuli
from brainpipe.errors import BrainpipeInputError
from brainpipe.storage import write_text_atomic

SPLIT_COLUMNS = ("stimulus", "split", "shared")


def make_splits(stimuli_tsv: str | Path, out_tsv: str | Path) -> pd.DataFrame:
    """Write ``splits.tsv`` (stimulus, split, shared): shared stimuli are test, the rest train."""
    stimuli = read_stimuli(stimuli_tsv)
    shared = pd.to_numeric(stimuli["shared"], errors="coerce")
    if shared.isna().any() or not shared.isin([0, 1]).all():
        raise BrainpipeInputError(stimuli_tsv, "shared", "expected 0 or 1 for every stimulus")
    table = pd.DataFrame(
        {
            "stimulus": stimuli["stimulus"].astype(str),
            "split": ["test" if s else "train" for s in shared.astype(int)],
            "shared": shared.astype(int),
        }
    )
    write_text_atomic(table.to_csv(sep="\t", index=False), out_tsv)
    return table


def read_splits(path: str | Path) -> pd.Series:
    """Read ``splits.tsv`` as a Series stimulus -> split ("train" or "test")."""
    path = Path(path)
    table = pd.read_csv(path, sep="\t", dtype={"stimulus": str, "split": str})
    for col in ("stimulus", "split"):
        if col not in table.columns:
            raise BrainpipeInputError(path, col, "column is missing")
    bad = ~table["split"].isin(["train", "test"])
    if bad.any():
        raise BrainpipeInputError(
            path, "split", f"expected 'train' or 'test', got {table['split'][bad].iloc[0]!r}"
        )
    return table.set_index("stimulus")["split"]


def trial_split(stimuli: pd.Series | list[str], splits: pd.Series, source: str) -> pd.Series:
    """Split label of each trial from its stimulus id; unknown stimuli are an error."""
    stimuli = pd.Series(list(stimuli), dtype=str)
    labels = stimuli.map(splits)
    if labels.isna().any():
        raise BrainpipeInputError(
            source, "stimulus", f"stimulus {stimuli[labels.isna()].iloc[0]!r} has no split"
        )
    return labels
