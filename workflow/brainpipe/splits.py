"""The explicit split table: which stimuli are test and which are train.

Made once per dataset and an input to every fitting stage. The stimuli every
subject sees (NSD's shared 1000, the synthetic dataset's shared set) are the
test split, so test stimuli never enter anything that is fitted. Cross-subject
alignment needs shared stimuli in the *training* split, so ``make_splits`` can move a
fraction of the shared stimuli (``shared_train_fraction``, config
``splits.shared_train_fraction``) into the training split, chosen deterministically
by a hash of the stimulus id.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from brainpipe.bids import read_stimuli
from brainpipe.errors import BrainpipeInputError
from brainpipe.storage import write_text_atomic

SPLIT_COLUMNS = ("stimulus", "split", "shared")


def _stimulus_hash(stimulus: str) -> int:
    """A stable 64-bit hash of a stimulus id (independent of Python's hash seed)."""
    return int.from_bytes(hashlib.sha256(stimulus.encode()).digest()[:8], "big")


def make_splits(
    stimuli_tsv: str | Path, out_tsv: str | Path, shared_train_fraction: float = 0.0
) -> pd.DataFrame:
    """Write ``splits.tsv`` (stimulus, split, shared): shared stimuli are test, the rest train.

    Parameters
    ----------
    stimuli_tsv : path
        The dataset's stimulus table (columns ``stimulus`` and ``shared``, 0 or 1).
    out_tsv : path
        Where to write ``splits.tsv`` (atomically).
    shared_train_fraction : float in [0, 1)
        Fraction of the shared stimuli that go to the training split instead of
        test, so that cross-subject alignment has shared training stimuli. The
        ``round(fraction * n_shared)`` shared stimuli with the smallest SHA-256 hash
        of their id are chosen: deterministic, independent of row order, and a
        stimulus keeps its split when others are added. 0 (the default) keeps every
        shared stimulus in test.

    Returns
    -------
    pandas.DataFrame
        The table written.
    """
    stimuli = read_stimuli(stimuli_tsv)
    shared = pd.to_numeric(stimuli["shared"], errors="coerce")
    if shared.isna().any() or not shared.isin([0, 1]).all():
        raise BrainpipeInputError(stimuli_tsv, "shared", "expected 0 or 1 for every stimulus")
    fraction = float(shared_train_fraction)
    if not 0.0 <= fraction < 1.0:
        raise BrainpipeInputError(
            "config",
            "splits.shared_train_fraction",
            f"got {shared_train_fraction!r}; expected 0 <= value < 1",
        )
    ids = stimuli["stimulus"].astype(str)
    shared_ids = ids[shared.astype(int).to_numpy() == 1].tolist()
    n_train = int(round(fraction * len(shared_ids)))
    shared_train = set(sorted(shared_ids, key=lambda s: (_stimulus_hash(s), s))[:n_train])
    table = pd.DataFrame(
        {
            "stimulus": ids,
            "split": [
                "test" if s and sid not in shared_train else "train"
                for s, sid in zip(shared.astype(int), ids, strict=True)
            ],
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
