"""Paths and readers for a BIDS dataset laid out as brainpipe expects.

Raw runs follow BIDS (``sub-*/ses-*/func/*_bold.nii.gz`` with ``_bold.json``
sidecars and ``_events.tsv``); brain masks, ROI masks and stimuli sit in the
places the embedded synthetic dataset uses, which real-dataset ingest
reproduces.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd

from brainpipe.errors import BrainpipeInputError

#: Columns every events.tsv must have.
EVENTS_COLUMNS = ("onset", "duration", "trial_type", "stimulus")
#: Columns the stimuli table must have.
STIMULI_COLUMNS = ("stimulus", "image", "caption", "shared")


@dataclass(frozen=True)
class RunKey:
    """One functional run of one subject."""

    subject: str
    session: str
    run: str


@dataclass(frozen=True)
class BidsLayout:
    """Where each file of a dataset lives.

    Parameters
    ----------
    root : Path
        Dataset root (holds ``dataset_description.json``).
    task : str
        BIDS task label of the functional runs.
    """

    root: Path
    task: str = "images"

    def _func_stem(self, key: RunKey) -> Path:
        name = f"sub-{key.subject}_ses-{key.session}_task-{self.task}_run-{key.run}"
        return Path(self.root, f"sub-{key.subject}", f"ses-{key.session}", "func", name)

    def bold(self, key: RunKey) -> Path:
        """The 4D BOLD NIfTI of a run."""
        return self._func_stem(key).with_name(self._func_stem(key).name + "_bold.nii.gz")

    def sidecar(self, key: RunKey) -> Path:
        """The JSON sidecar of a run's BOLD file."""
        return self._func_stem(key).with_name(self._func_stem(key).name + "_bold.json")

    def events(self, key: RunKey) -> Path:
        """The events.tsv of a run."""
        return self._func_stem(key).with_name(self._func_stem(key).name + "_events.tsv")

    @cached_property
    def surface_space(self) -> str | None:
        """The fsaverage space of a surface dataset, else None (a volume dataset).

        A BIDS + fMRIPrep data view made with ``source.space: fsaverage*`` records its
        space in ``dataset_description.json`` (``brainpipe_view.space``); its runs are
        then per-hemisphere GIFTI files (:meth:`surface_bold`), with no brain mask.
        """
        from brainpipe.surface import is_surface_space

        path = Path(self.root, "dataset_description.json")
        try:
            view = json.loads(path.read_text() or "{}").get("brainpipe_view") or {}
        except (OSError, json.JSONDecodeError, AttributeError):
            return None
        space = view.get("space")
        return str(space) if is_surface_space(space) else None

    def surface_bold(self, key: RunKey, hemi: str) -> Path:
        """One hemisphere's (``L``/``R``) GIFTI time series of a run on a surface dataset."""
        stem = self._func_stem(key)
        return stem.with_name(f"{stem.name}_hemi-{hemi}_space-{self.surface_space}_bold.func.gii")

    def surface_roi(self, subject: str, roi: str, hemi: str) -> Path:
        """One hemisphere's per-vertex ROI mask (uint8 GIFTI) on a surface dataset."""
        return Path(
            self.root,
            "derivatives",
            "rois",
            f"sub-{subject}",
            f"sub-{subject}_hemi-{hemi}_space-{self.surface_space}_roi-{roi}_mask.func.gii",
        )

    def runs(self, subject: str, session: str) -> list[str]:
        """The run labels of ``task`` that one session has (its BOLD files), in run order.

        Raises
        ------
        BrainpipeInputError
            The session has no run of the task.
        """
        folder = Path(self.root, f"sub-{subject}", f"ses-{session}", "func")
        stem = f"sub-{subject}_ses-{session}_task-{self.task}_run-"
        end = "_bold.nii.gz"
        if self.surface_space:
            end = f"_hemi-L_space-{self.surface_space}_bold.func.gii"
        tails = (p.name[len(stem) :] for p in folder.glob(f"{stem}*{end}"))
        labels = [t[: -len(end)] for t in tails if "_" not in t[: -len(end)]]
        if not labels:
            raise BrainpipeInputError(
                folder, "runs", f"sub-{subject} ses-{session} has no run of task {self.task!r} "
                "(config 'runs: all' takes the runs each listed session has)",
            )  # fmt: skip
        return sorted(labels, key=lambda r: (int(r) if r.isdigit() else float("inf"), r))

    def brain_mask(self, subject: str) -> Path:
        """The subject's brain mask in functional space."""
        return Path(
            self.root, f"sub-{subject}", "anat", f"sub-{subject}_space-synth_desc-brain_mask.nii.gz"
        )

    def roi_mask(self, subject: str, roi: str) -> Path:
        """A binary ROI mask in the subject's functional space."""
        return Path(
            self.root,
            "derivatives",
            "rois",
            f"sub-{subject}",
            f"sub-{subject}_space-synth_roi-{roi}_mask.nii.gz",
        )

    def available_rois(self, subject: str) -> list[str]:
        """Names of the ROI masks the dataset has for ``subject``, sorted."""
        folder = self.roi_mask(subject, "X").parent
        pattern = f"sub-{subject}_space-synth_roi-*_mask.nii.gz"
        if self.surface_space:  # both hemispheres are written; the left one names the ROI
            pattern = f"sub-{subject}_hemi-L_space-{self.surface_space}_roi-*_mask.func.gii"
        return sorted(p.name.split("_roi-")[1].split("_mask")[0] for p in folder.glob(pattern))

    @property
    def stimuli_dir(self) -> Path:
        """Folder holding the stimulus images and their table."""
        return Path(self.root, "stimuli")

    @property
    def stimuli_table(self) -> Path:
        """The table of stimuli: id, image path, caption, shared flag."""
        return self.stimuli_dir / "stimuli.tsv"


#: Config value of ``runs`` that takes every run each session has (BOLD5000's sessions
#: have 9 or 10 runs).
ALL_RUNS = "all"


def run_keys(
    subject: str, sessions: list[str], runs: list[str] | str, layout: BidsLayout | None = None
) -> list[RunKey]:
    """All runs of a subject, in acquisition order.

    ``runs`` is the config's list of run labels, or ``"all"`` (:data:`ALL_RUNS`): each
    session's runs as found in ``layout`` (:meth:`BidsLayout.runs`).
    """
    if runs == ALL_RUNS:
        if layout is None:
            raise ValueError("runs: all needs the dataset's layout to find the runs")
        return [RunKey(subject, ses, run) for ses in sessions for run in layout.runs(subject, ses)]
    return [RunKey(subject, ses, run) for ses in sessions for run in runs]


def read_events(path: str | Path) -> pd.DataFrame:
    """Read and check an events.tsv.

    Returns the stimulus trials (``trial_type`` other than blanks) sorted by
    onset, with ``onset`` and ``duration`` as float and ``stimulus`` as str.

    Raises
    ------
    BrainpipeInputError
        If a column is missing, a value is not numeric or is negative, or a
        stimulus trial has no stimulus id.
    """
    path = Path(path)
    if not path.exists():
        raise BrainpipeInputError(path, "<file>", "events file is missing")
    events = pd.read_csv(path, sep="\t", dtype={"stimulus": str, "trial_type": str})
    missing = [c for c in EVENTS_COLUMNS if c not in events.columns]
    if missing:
        raise BrainpipeInputError(
            path,
            missing[0],
            f"column is missing (has {list(events.columns)}, needs {list(EVENTS_COLUMNS)})",
        )
    for col in ("onset", "duration"):
        values = pd.to_numeric(events[col], errors="coerce")
        bad = values.isna()
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise BrainpipeInputError(
                path, col, f"row {row + 1}: expected a number, got {events[col].iloc[row]!r}"
            )
        negative = values < 0
        if negative.any():
            row = int(negative.to_numpy().nonzero()[0][0])
            raise BrainpipeInputError(
                path, col, f"row {row + 1}: must be >= 0, got {float(values.iloc[row])}"
            )
        events[col] = values.astype(float)
    no_stim = events["stimulus"].isna() | (events["stimulus"].str.strip() == "")
    if no_stim.any():
        row = int(no_stim.to_numpy().nonzero()[0][0])
        raise BrainpipeInputError(path, "stimulus", f"row {row + 1}: stimulus id is empty")
    return events.sort_values("onset", kind="stable").reset_index(drop=True)


def read_tr(sidecar: str | Path) -> float:
    """Repetition time in seconds from a BOLD JSON sidecar."""
    sidecar = Path(sidecar)
    if not sidecar.exists():
        raise BrainpipeInputError(sidecar, "<file>", "BOLD sidecar is missing")
    try:
        meta = json.loads(sidecar.read_text())
    except json.JSONDecodeError as err:
        raise BrainpipeInputError(sidecar, "<file>", f"not valid JSON ({err})") from err
    tr = meta.get("RepetitionTime")
    if not isinstance(tr, int | float) or isinstance(tr, bool) or tr <= 0:
        raise BrainpipeInputError(
            sidecar, "RepetitionTime", f"expected a positive number of seconds, got {tr!r}"
        )
    return float(tr)


def read_stimuli(path: str | Path) -> pd.DataFrame:
    """Read and check the stimuli table (one row per stimulus id)."""
    path = Path(path)
    if not path.exists():
        raise BrainpipeInputError(path, "<file>", "stimuli table is missing")
    table = pd.read_csv(path, sep="\t", dtype={"stimulus": str, "image": str, "caption": str})
    missing = [c for c in STIMULI_COLUMNS if c not in table.columns]
    if missing:
        raise BrainpipeInputError(path, missing[0], "column is missing")
    dup = table["stimulus"].duplicated()
    if dup.any():
        raise BrainpipeInputError(
            path, "stimulus", f"duplicate stimulus id {table['stimulus'][dup].iloc[0]!r}"
        )
    return table
