"""BIDS MEG runs (THINGS-MEG, OpenNeuro ds004212), read with mne-bids.

THINGS-MEG (Hebart et al. 2023) publishes ``sub-BIGMEG{1..4}/ses-{01..12}/meg/
sub-*_ses-*_task-main_run-{01..10}_meg.ds`` (CTF) with one ``*_events.tsv`` per run. The
publishers' ``MEG/step1_preprocessing.py`` (github.com/ViCCo-Group/THINGS-data) takes each
trial's onset from the events file's ``sample`` column and its image from ``value`` (empty
for catch trials, which they fill with 999999), keeps the ``mag`` channels, filters
0.1-40 Hz and epochs -0.1..1.3 s. We read runs the same way: the recording through
:func:`mne_bids.read_raw_bids`, trials from ``sample`` / ``value`` / ``trial_type``
(``exp``: training images, ``test``: the 200 repeated test images, ``catch``: dropped).

The synthetic MEG world writes FIF (``mne_bids.write_raw_bids`` of a ``RawArray``) in this
layout; the reader does not care which MEG format a run is in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from brainpipe.errors import BrainpipeInputError

#: Value publishers give catch trials (their events have no image there).
CATCH_VALUE = 999999
#: trial_type of each split's trials.
TRIAL_TYPES = {"exp": "train", "test": "test"}


def _bids_path(root: str | Path, subject: str, session: str, run: str, task: str):
    from mne_bids import BIDSPath

    return BIDSPath(
        subject=subject, session=session, task=task, run=run, datatype="meg", root=Path(root)
    )


def write_run(
    root: str | Path,
    subject: str,
    session: str,
    run: str,
    info,
    data: np.ndarray,
    stim: np.ndarray,
    split: str,
    task: str = "main",
) -> Path:
    """Write one run with mne-bids and its events.tsv in THINGS-MEG's columns."""
    import mne
    from mne_bids import write_raw_bids

    raw = mne.io.RawArray(data, info, verbose="error")
    raw.info["line_freq"] = 50.0
    path = _bids_path(root, subject, session, run, task)
    write_raw_bids(raw, path, format="FIF", allow_preload=True, overwrite=True, verbose="error")
    onsets = np.flatnonzero(stim)
    values = stim[onsets].astype(int)
    catch = values == 99999
    table = pd.DataFrame(
        {
            "onset": onsets / info["sfreq"],
            "duration": 0.5,
            "sample": onsets,
            "value": pd.array(np.where(catch, None, values), dtype="Int64"),
            "trial_type": np.where(catch, "catch", "exp" if split == "train" else "test"),
        }
    )
    events = path.copy().update(suffix="events", extension=".tsv")
    table.to_csv(events.fpath, sep="\t", index=False, na_rep="n/a")
    return Path(path.fpath)


def finish_dataset(root: str | Path, name: str) -> None:
    """Write dataset_description.json if mne-bids has not."""
    from mne_bids import make_dataset_description

    make_dataset_description(path=root, name=name, overwrite=True, verbose="error")


def find_runs(root: str | Path, subject: str, task: str = "main") -> list[tuple[str, str]]:
    """``(session, run)`` of every MEG run of ``subject``, sorted."""
    from mne_bids import BIDSPath

    paths = BIDSPath(
        subject=subject, task=task, datatype="meg", suffix="meg", root=Path(root)
    ).match()
    runs = sorted({(p.session or "", p.run or "") for p in paths})
    if not runs:
        raise BrainpipeInputError(
            Path(root, f"sub-{subject}"), "meg", f"no task-{task} MEG runs found"
        )
    return runs


def read_run(root: str | Path, subject: str, session: str, run: str, task: str = "main"):
    """The run's recording and its trials.

    Returns
    -------
    raw : mne.io.Raw
    trials : pandas.DataFrame
        Columns ``sample`` (onset, samples from the first sample of the file),
        ``stimulus`` (our id ``things-{value}``) and ``split``; catch trials dropped.
    """
    from mne_bids import read_raw_bids

    path = _bids_path(root, subject, session, run, task)
    raw = read_raw_bids(path.copy().update(suffix="meg"), verbose="error").load_data()
    events = path.copy().update(suffix="events", extension=".tsv").fpath
    if not Path(events).exists():
        raise BrainpipeInputError(events, "<file>", "events file is missing")
    table = pd.read_csv(events, sep="\t", na_values=["n/a"])
    for col in ("sample", "value", "trial_type"):
        if col not in table.columns:
            raise BrainpipeInputError(events, col, f"column is missing (has {list(table)})")
    keep = table["trial_type"].isin(list(TRIAL_TYPES))
    table = table[keep & table["value"].notna()]
    trials = pd.DataFrame(
        {
            "sample": table["sample"].astype(int).to_numpy(),
            "stimulus": [f"things-{int(v):05d}" for v in table["value"]],
            "split": table["trial_type"].map(TRIAL_TYPES).to_numpy(),
        }
    )
    return raw, trials
