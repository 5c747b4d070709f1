"""BIDS datasets preprocessed by fMRIPrep (registry ``kind: bids``): index, check, lay out.

A ``bids`` dataset is a raw BIDS folder plus its fMRIPrep derivatives, either on local
disk (``source.path``, ``source.fmriprep``) or fetched from an OpenNeuro accession
(``source.accession``; the derivatives are then ``derivatives/fmriprep`` of the accession).
The derivatives are indexed with nilearn's BIDS query (chosen by measured indexing time,
``benchmarks/bids_index.py``), and the files fMRIPrep writes are read by their documented
names ("Outputs of fMRIPrep", https://fmriprep.org/en/stable/outputs.html)::

    sub-<S>/[ses-<E>/]func/<run>_space-<space>[_res-<N>]_desc-preproc_bold.nii.gz (+ .json)
    <run>_space-<space>[_res-<N>]_desc-brain_mask.nii.gz
    <run>_desc-confounds_timeseries.tsv (+ .json)
    <run>_hemi-{L,R}_space-fsaverage<N>_bold.func.gii (if present)

where ``<run>`` is ``sub-<S>_[ses-<E>_]task-<T>_run-<R>``.

Events come from the raw dataset's ``*_events.tsv``, mapped through the dataset's
:class:`StimulusAdapter` (which column names the stimulus, where its files live, which
stimuli are the test set). Everything is checked before any compute: a missing file, a
space fMRIPrep did not write, a sidecar TR that disagrees with the NIfTI header, a run
without events or without stimulus trials each stop with a
:class:`~brainpipe.errors.BrainpipeInputError` naming the file and the field.

The data folder the rest of the pipeline reads (:class:`brainpipe.bids.BidsLayout`) is
then built from links to those files, never copies of the time series::

    sub-<S>/ses-<E>/func/<stem>_bold.nii.gz        -> the preprocessed BOLD
    sub-<S>/ses-<E>/func/<stem>_<fMRIPrep name>    -> the same file, fMRIPrep's name (nilearn's
                                                      load_confounds finds the confounds by it)
    sub-<S>/ses-<E>/func/<stem>_desc-confounds_timeseries.{tsv,json}, surfaces -> links
    sub-<S>/ses-<E>/func/<stem>_bold.json          RepetitionTime (checked) + Sources
    sub-<S>/ses-<E>/func/<stem>_events.tsv         onset, duration, trial_type, stimulus, ...
    sub-<S>/anat/sub-<S>_space-synth_desc-brain_mask.nii.gz   intersection of the runs' masks
    derivatives/rois/sub-<S>/sub-<S>_space-synth_roi-<NAME>_mask.nii.gz  resampled to the BOLD grid
    stimuli/stimuli.tsv + stimuli/images/...       the adapter's stimulus table and links
"""

from __future__ import annotations

import json
import logging
import os
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from brainpipe.bids import ALL_RUNS, BidsLayout, RunKey
from brainpipe.errors import BrainpipeInputError
from brainpipe.storage import atomic_path
from brainpipe.surface import (
    FSAVERAGE_VERTICES,
    HEMIS,
    expected_vertices,
    gifti_header,
    is_surface_space,
    read_surface_roi,
    write_vertex_mask,
)

log = logging.getLogger(__name__)

#: Default output space (fMRIPrep's default standard space).
DEFAULT_SPACE = "MNI152NLin2009cAsym"
#: Relative tolerance between the sidecar's RepetitionTime and the NIfTI header's pixdim[4].
TR_RTOL = 1e-3
#: fMRIPrep outputs brainpipe reads (everything else under derivatives/ is not fetched).
READ_SUFFIXES = (
    "_desc-preproc_bold.nii.gz", "_desc-preproc_bold.json", "_desc-brain_mask.nii.gz",
    "_desc-confounds_timeseries.tsv", "_desc-confounds_timeseries.json", "_bold.func.gii",
    # fMRIPrep < 1.2 (BOLD5000's derivatives on OpenNeuro)
    "_preproc.nii.gz", "_brainmask.nii.gz", "_bold_confounds.tsv", ".func.gii",
    "_bold.json",  # surface sidecars (_hemi-L_space-fsaverage5_bold.json), where written
)  # fmt: skip
#: ROIs made from the templates nilearn ships (no download): name -> loader name.
NILEARN_MASKS = {
    "mni152_brain": "load_mni152_brain_mask",
    "mni152_gm": "load_mni152_gm_mask",
    "mni152_wm": "load_mni152_wm_mask",
}


# --------------------------------------------------------------------------- adapter


@dataclass(frozen=True)
class StimulusAdapter:
    """How a dataset's events name its stimuli and where the stimulus files live.

    Attributes
    ----------
    column : str
        Events column naming the stimulus of each trial (BOLD5000: ``ImgName``,
        THINGS-fMRI: ``file_path``, brainpipe's own layout: ``stimulus``).
    strip_prefixes : tuple of str
        Prefixes removed from the column's value to get the stimulus id (BOLD5000 marks
        its repeated images ``rep_``; both presentations are one stimulus).
    drop : dict
        Rows left out of the design: events column -> values (THINGS-fMRI: catch trials).
    stimuli_dir : str
        Folder of the stimulus files: relative to the BIDS root, or absolute.
    image : str
        Path of a stimulus file under ``stimuli_dir``: a template over the events row's
        columns plus ``{stimulus}`` (the id), ``{value}`` (the column's value),
        ``{name}`` (its file name) and ``{parent}`` (its folder name).
    maps : dict
        Per column, a value -> replacement table applied before formatting ``image``
        (BOLD5000: ``ImgType`` ``rep_coco`` -> folder ``COCO``).
    caption : str
        Template of a stimulus caption (same fields as ``image``); ``""`` for none.
    test : dict or str
        Which stimuli are the held-out test set (``shared``): ``"repeated"`` (shown more
        than once to every subject) or ``{"column": C, "values": [...]}`` (an events
        column marks them; THINGS-fMRI: ``trial_type`` ``test``).
    """

    column: str = "stimulus"
    strip_prefixes: tuple[str, ...] = ()
    drop: dict[str, tuple[str, ...]] = field(default_factory=dict)
    stimuli_dir: str = "stimuli"
    image: str = "{value}"
    maps: dict[str, dict[str, str]] = field(default_factory=dict)
    caption: str = ""
    test: Any = "repeated"

    @classmethod
    def from_config(cls, block: dict[str, Any] | None, where: str | Path) -> StimulusAdapter:
        """Read the registry's ``stimuli`` block; unknown keys stop naming the key."""
        block = dict(block or {})
        known = {
            "column", "strip_prefixes", "drop", "dir", "image", "maps", "caption", "test",
        }  # fmt: skip
        unknown = sorted(set(block) - known)
        if unknown:
            raise BrainpipeInputError(
                where, f"stimuli.{unknown[0]}", f"unknown key (known: {sorted(known)})"
            )
        test = block.get("test", "repeated")
        if test != "repeated" and not (
            isinstance(test, dict) and "column" in test and isinstance(test.get("values"), list)
        ):
            raise BrainpipeInputError(
                where, "stimuli.test", f"expected 'repeated' or {{column, values}}, got {test!r}"
            )
        return cls(
            column=str(block.get("column", "stimulus")),
            strip_prefixes=tuple(block.get("strip_prefixes", ()) or ()),
            drop={str(k): tuple(str(x) for x in v) for k, v in (block.get("drop") or {}).items()},
            stimuli_dir=str(block.get("dir", "stimuli")),
            image=str(block.get("image", "{value}")),
            maps={
                str(k): {str(a): str(b) for a, b in v.items()}
                for k, v in (block.get("maps") or {}).items()
            },
            caption=str(block.get("caption", "") or ""),
            test=test,
        )  # fmt: skip

    def stimulus_id(self, value: str) -> str:
        """The stimulus id of an events value: prefixes stripped, folders and extension off."""
        name = Path(str(value)).name
        for prefix in self.strip_prefixes:
            if name.startswith(prefix):
                name = name[len(prefix) :]
        stem = name
        for suffix in (".jpeg", ".jpg", ".png", ".JPEG", ".JPG", ".PNG", ".bmp", ".tif"):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        return stem

    def _fields(self, row: dict[str, Any]) -> dict[str, str]:
        value = str(row[self.column])
        out = {str(k): str(v) for k, v in row.items()}
        for col, table in self.maps.items():
            if col in out:
                out[col] = table.get(out[col], out[col])
        name = Path(value).name
        for prefix in self.strip_prefixes:
            if name.startswith(prefix):
                name = name[len(prefix) :]
        out.update(
            value=value, stimulus=self.stimulus_id(value), name=name, parent=Path(value).parent.name
        )
        return out

    def image_path(self, row: dict[str, Any], where: Path) -> str:
        """The stimulus file of an events row, relative to ``stimuli_dir``."""
        return _format(self.image, self._fields(row), where, "stimuli.image")

    def caption_of(self, row: dict[str, Any], where: Path) -> str:
        """The caption of an events row's stimulus (``""`` without a caption template)."""
        if not self.caption:
            return ""
        return _format(self.caption, self._fields(row), where, "stimuli.caption").replace("_", " ")


def _format(template: str, fields: dict[str, str], where: Path, key: str) -> str:
    names = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    missing = [n for n in names if n not in fields]
    if missing:
        raise BrainpipeInputError(
            where, missing[0], f"column needed by the registry's {key} {template!r} is missing"
        )
    return template.format(**fields)


def read_raw_events(path: Path, adapter: StimulusAdapter) -> pd.DataFrame:
    """A run's raw ``events.tsv`` as stimulus trials: onset, duration, trial_type, stimulus.

    The original columns are kept after those four. Rows with an empty stimulus
    value (fixation, blank) and rows the adapter drops are left out.

    Raises
    ------
    BrainpipeInputError
        Missing file, missing column, non-numeric onset/duration, or no stimulus trial.
    """
    if not path.exists():
        raise BrainpipeInputError(path, "<file>", "events file of this run is missing")
    raw = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    for col in ("onset", "duration", adapter.column):
        if col not in raw.columns:
            raise BrainpipeInputError(
                path, col, f"column is missing (has {list(raw.columns)}); the registry's "
                f"stimuli.column is {adapter.column!r}",
            )  # fmt: skip
    keep = ~raw[adapter.column].str.strip().isin(["", "n/a", "nan", "NaN", "None"])
    for col, values in adapter.drop.items():
        if col not in raw.columns:
            raise BrainpipeInputError(
                path, col, "column named in the registry's stimuli.drop is missing"
            )
        keep &= ~raw[col].isin(values)
    events = raw[keep].reset_index(drop=True)
    if events.empty:
        raise BrainpipeInputError(
            path, adapter.column, "no stimulus trials (every row is empty or dropped)"
        )
    out = pd.DataFrame(index=events.index)
    for col in ("onset", "duration"):
        values = pd.to_numeric(events[col], errors="coerce")
        if values.isna().any():
            row = int(values.isna().to_numpy().nonzero()[0][0])
            raise BrainpipeInputError(
                path,
                col,
                f"stimulus row {row + 1}: expected a number, got {events[col].iloc[row]!r}",
            )
        out[col] = values.astype(float)
    out["trial_type"] = events["trial_type"] if "trial_type" in events else "stimulus"
    out["stimulus"] = [adapter.stimulus_id(v) for v in events[adapter.column]]
    for col in events.columns:
        if col not in out.columns:
            out[col] = events[col]
    return out.sort_values("onset", kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class FmriprepOptions:
    """What to read from an fMRIPrep folder (registry entry + config ``source`` block).

    Attributes
    ----------
    space : str
        fMRIPrep output space (``source.space``): ``MNI152NLin2009cAsym`` (default),
        ``T1w``, ``MNI152NLin6Asym``, ..., or a surface, ``fsaverage5``, ``fsaverage6``,
        ``fsaverage`` (the runs are then the ``*_hemi-{L,R}_space-<space>_bold.func.gii``).
    res : str or None
        ``res-`` entity of the space (``source.res``); None accepts a single match
        with or without one.
    surfaces : bool
        Also link ``*_hemi-{L,R}_space-fsaverage*_bold.func.gii`` where present.
    adapter : StimulusAdapter
    rois : dict
        ROI name -> spec: ``{"nilearn": "mni152_gm"}`` (templates nilearn ships) or
        ``{"file": "path/with/{subject}", "labels": [..]}`` (dataset-provided masks or an
        atlas; path relative to the BIDS root; a list of files is their union). On a
        surface: one file per hemisphere, ``{hemi}`` (``lh``/``rh``) in the path or
        ``{"L": path, "R": path}``: FreeSurfer ``.label`` / ``.annot`` (``labels``: parcel
        names) or a per-vertex ``.gii``/``.mgh``/``.mgz``.
    """

    space: str = DEFAULT_SPACE
    res: str | None = None
    surfaces: bool = True
    adapter: StimulusAdapter = field(default_factory=StimulusAdapter)
    rois: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, merged: dict[str, Any], where: str | Path) -> FmriprepOptions:
        rois = merged.get("rois") or {}
        if not isinstance(rois, dict):
            raise BrainpipeInputError(where, "source.rois", "expected a mapping name -> spec")
        for name, spec in rois.items():
            if not isinstance(spec, dict) or not ({"nilearn", "file"} & set(spec)):
                raise BrainpipeInputError(
                    where, f"source.rois.{name}", "expected {nilearn: NAME} or {file: PATH}"
                )
            if "nilearn" in spec and spec["nilearn"] not in NILEARN_MASKS:
                raise BrainpipeInputError(
                    where, f"source.rois.{name}.nilearn",
                    f"got {spec['nilearn']!r}; nilearn ships {sorted(NILEARN_MASKS)}",
                )  # fmt: skip
        res = merged.get("res")
        space = str(merged.get("space") or DEFAULT_SPACE)
        if space.startswith("fs") and not is_surface_space(space):
            raise BrainpipeInputError(
                where, "source.space", f"got {space!r}: surface spaces are the fsaverage meshes "
                f"({sorted(FSAVERAGE_VERTICES)}; every subject shares their vertices); "
                "fsnative differs per subject",
            )  # fmt: skip
        for name, spec in rois.items():
            if isinstance(spec.get("file"), dict) and (
                not is_surface_space(space) or set(spec["file"]) != set(HEMIS)
            ):
                raise BrainpipeInputError(
                    where, f"source.rois.{name}.file",
                    f"got {spec['file']!r}: a mapping {{L: path, R: path}} is for surface spaces "
                    f"({sorted(FSAVERAGE_VERTICES)}); source.space is {space!r}",
                )  # fmt: skip
        if is_surface_space(space):
            for name, spec in rois.items():
                if "nilearn" in spec:
                    raise BrainpipeInputError(
                        where, f"source.rois.{name}.nilearn",
                        f"space {space!r} is a surface; nilearn ships no fsaverage atlas offline: "
                        "give one file per hemisphere (file: path with {hemi}, .label/.annot/.gii)",
                    )  # fmt: skip
                if isinstance(spec["file"], str) and "{hemi}" not in spec["file"]:
                    raise BrainpipeInputError(
                        where, f"source.rois.{name}.file",
                        f"got {spec['file']!r}: on a surface an ROI is one file per hemisphere; "
                        "put {hemi} (lh/rh) in the path or give {L: path, R: path}",
                    )  # fmt: skip
        return cls(
            space=space,
            res=None if res in (None, "") else str(res),
            surfaces=bool(merged.get("surfaces", True)),
            adapter=StimulusAdapter.from_config(merged.get("stimuli"), where),
            rois=dict(rois),
        )


# --------------------------------------------------------------------------- index


def index_derivatives(root: Path, subjects: list[str]) -> pd.DataFrame:
    """Every functional file fMRIPrep wrote for ``subjects``, one row each, with its entities.

    nilearn's BIDS query (``nilearn.interfaces.bids.get_bids_files``, globbing the
    ``sub-*/[ses-*/]func/`` folders) and ``parse_bids_filename``: the fastest of pybids,
    bids2table and nilearn on an NSD-sized derivatives tree (3.6 s vs 18.5 s and 1,110 s for
    46,129 files, ``benchmarks/bids_index.py``), and already a dependency.
    """
    from nilearn.interfaces.bids import get_bids_files, parse_bids_filename

    rows = []
    for sub in subjects:
        for path in get_bids_files(str(root), sub_label=sub, modality_folder="func"):
            parsed = parse_bids_filename(path)
            ent = parsed["entities"]
            rows.append(
                {
                    **{k: ent.get(k) for k in INDEX_ENTITIES},
                    "suffix": parsed["suffix"],
                    "ext": "." + str(parsed["extension"]),
                    "file": str(path),
                }
            )
    columns = [*INDEX_ENTITIES, "suffix", "ext", "file"]
    return pd.DataFrame(rows, columns=columns)


#: BIDS entities kept in the index.
INDEX_ENTITIES = ("sub", "ses", "task", "run", "space", "res", "desc", "hemi")


@dataclass(frozen=True)
class RunFiles:
    """Every file of one run, checked."""

    key: RunKey
    bold: Path
    bold_json: Path | None
    mask: Path | None  # None on a surface (the hemispheres' GIFTI files are ``surfaces``)
    confounds: Path
    confounds_json: Path | None
    events: Path
    surfaces: tuple[Path, ...]
    tr: float
    n_scans: int
    space_entity: str = ""  # "space-X[_res-N]"
    legacy: bool = False  # fMRIPrep < 1.2 names (BOLD5000 on OpenNeuro)


def _stem(key: RunKey, task: str) -> str:
    ses = f"_ses-{key.session}" if key.session else ""
    return f"sub-{key.subject}{ses}_task-{task}_run-{key.run}"


def _after_run(name: str) -> str:
    """The part of a BIDS file name after its ``run-`` entity (``_space-..._bold.nii.gz``)."""
    parts = re.split(r"_run-[A-Za-z0-9]+", name, maxsplit=1)
    return parts[1] if len(parts) == 2 else name


def _raw_file(folder: Path, key: RunKey, task: str, suffix: str) -> Path:
    """A raw run file by BIDS name, accepting ``run-1`` for the config's ``01``."""
    want = folder / f"{_stem(key, task)}_{suffix}"
    if want.exists():
        return want
    ses = f"_ses-{key.session}" if key.session else ""
    for cand in sorted(folder.glob(f"sub-{key.subject}{ses}_task-{task}_run-*_{suffix}")):
        label = re.search(r"_run-([A-Za-z0-9]+)_", cand.name)
        if label and _run_number(label.group(1)) == _run_number(key.run):
            return cand
    return want


def _pick(rows: pd.DataFrame, what: str, where: Path, field_name: str) -> Path:
    if len(rows) == 0:
        raise BrainpipeInputError(where, field_name, f"no {what}")
    if len(rows) > 1:
        raise BrainpipeInputError(
            where, field_name,
            f"{len(rows)} files match the {what}: {sorted(Path(f).name for f in rows['file'])}; "
            "set source.res",
        )  # fmt: skip
    return Path(rows["file"].iloc[0])


def _sidecar_tr(paths: list[Path]) -> tuple[float, Path]:
    """RepetitionTime from the first sidecar that has one (derivative first, then raw)."""
    for path in paths:
        if path is None or not path.exists():
            continue
        try:
            meta = json.loads(path.read_text() or "{}")
        except json.JSONDecodeError as err:
            raise BrainpipeInputError(path, "<file>", f"not valid JSON ({err})") from err
        if "RepetitionTime" in meta:
            tr = meta["RepetitionTime"]
            if not isinstance(tr, int | float) or isinstance(tr, bool) or tr <= 0:
                raise BrainpipeInputError(
                    path, "RepetitionTime", f"expected a positive number of seconds, got {tr!r}"
                )
            return float(tr), path
    raise BrainpipeInputError(
        paths[0] if paths else "<none>", "RepetitionTime",
        f"no sidecar of this run gives it (looked in {[str(p) for p in paths if p]})",
    )  # fmt: skip


def _raw_sidecars(bids_root: Path, key: RunKey, task: str) -> list[Path]:
    """Raw BOLD sidecars of a run, most specific first (BIDS inheritance principle)."""
    ses_dir = f"ses-{key.session}" if key.session else ""
    return [
        _raw_file(Path(bids_root, f"sub-{key.subject}", ses_dir, "func"), key, task, "bold.json"),
        Path(bids_root, f"sub-{key.subject}", ses_dir, f"sub-{key.subject}_task-{task}_bold.json"),
        Path(bids_root, f"sub-{key.subject}", f"sub-{key.subject}_task-{task}_bold.json"),
        Path(bids_root, f"task-{task}_bold.json"),
    ]


def find_runs(
    bids_root: Path,
    fmriprep_root: Path,
    subjects: list[str],
    sessions: list[str],
    runs: list[str] | str,
    task: str,
    opts: FmriprepOptions,
    index: pd.DataFrame | None = None,
) -> list[RunFiles]:
    """Find and check every file of every selected run, before anything is written.

    ``runs: all`` takes every run of the task fMRIPrep preprocessed in each session
    (BOLD5000's sessions have 9 or 10).

    Raises
    ------
    BrainpipeInputError
        A run's preprocessed BOLD in ``opts.space`` is absent (the message lists the
        spaces fMRIPrep did write), its mask, confounds or events are missing, a sidecar
        TR disagrees with the NIfTI header, or the mask's grid differs from the BOLD's.
    """
    index = index_derivatives(fmriprep_root, subjects) if index is None else index
    index = index[index["task"] == task]
    # One pass to group the index by run (run labels compared as numbers: run-1 == run-01).
    by_run = {
        key: rows
        for key, rows in index.assign(
            ses=index["ses"].fillna(""), run=index["run"].map(_run_number)
        ).groupby(["sub", "ses", "run"], sort=False)
    }
    empty = index.iloc[:0]
    out = []
    for sub in subjects:
        for ses in sessions or [""]:
            for run in runs if runs != ALL_RUNS else _runs_of(index, fmriprep_root, sub, ses, task):
                key = RunKey(sub, ses, run)
                rows = by_run.get((sub, ses, _run_number(run)), empty)
                out.append(_find_run(bids_root, fmriprep_root, key, task, opts, rows))
    return out


def _runs_of(index: pd.DataFrame, fmriprep_root: Path, sub: str, ses: str, task: str) -> list[str]:
    """Run labels of the task's files fMRIPrep wrote in one session, in run order."""
    rows = index[(index["sub"] == sub) & (index["ses"].fillna("") == ses) & index["run"].notna()]
    labels = sorted(
        {str(r) for r in rows["run"]}, key=lambda r: (int(r) if r.isdigit() else 1e9, r)
    )
    if not labels:
        where = Path(fmriprep_root, f"sub-{sub}", f"ses-{ses}" if ses else "", "func")
        raise BrainpipeInputError(
            where, "runs", f"fMRIPrep preprocessed no run of task {task!r} for sub-{sub}"
            + (f" ses-{ses}" if ses else "") + " (config 'runs: all')",
        )  # fmt: skip
    return labels


def _run_number(label: Any) -> str:
    """A run label compared as a number where it is one (``1`` and ``01`` are one run)."""
    if label is None or (isinstance(label, float) and np.isnan(label)):
        return ""
    text = str(label)
    return str(int(text)) if text.isdigit() else text


def _current_files(
    func: Path,
    key: RunKey,
    task: str,
    opts: FmriprepOptions,
    rows: pd.DataFrame,
    preproc: pd.DataFrame,
    expected: Path,
) -> tuple[Path, Path, Path, str, tuple[Path, ...]]:
    """BOLD, mask, confounds, space entity and surfaces of a run, by today's fMRIPrep names."""
    stem = _stem(key, task)
    ses_dir = f"ses-{key.session}" if key.session else ""
    preproc = rows[
        (rows["desc"] == "preproc") & (rows["suffix"] == "bold") & (rows["ext"] == ".nii.gz")
    ]
    if preproc.empty:
        raise BrainpipeInputError(
            expected, "<file>", f"fMRIPrep wrote no preprocessed BOLD for sub-{key.subject} "
            f"{ses_dir} task-{task} run-{key.run} (listed in the config keys 'sessions'/'runs')",
        )  # fmt: skip
    in_space = preproc[preproc["space"] == opts.space]
    if opts.res is not None:
        in_space = in_space[in_space["res"].astype(str) == opts.res]
    if in_space.empty:
        have = sorted(
            {
                f"{s}" + (f" res-{r}" if isinstance(r, str) else "")
                for s, r in zip(preproc["space"], preproc["res"], strict=True)
            }
        )
        raise BrainpipeInputError(
            expected, "space", f"space {opts.space!r}"
            f"{f' res-{opts.res}' if opts.res else ''} (config source.space/source.res) is not "
            f"among the spaces fMRIPrep wrote for this run: {have}",
        )  # fmt: skip
    bold = _pick(in_space, f"preprocessed BOLD in {opts.space}", expected, "res")
    res = in_space["res"].iloc[0]
    space_ent = f"space-{opts.space}" + (f"_res-{res}" if isinstance(res, str) and res else "")
    mask_rows = rows[
        (rows["desc"] == "brain") & (rows["suffix"] == "mask") & (rows["space"] == opts.space)
        & (rows["res"].astype(str) == str(res) if isinstance(res, str) else rows["res"].isna())
    ]  # fmt: skip
    mask = _pick(
        mask_rows, "brain mask", func / f"{stem}_{space_ent}_desc-brain_mask.nii.gz", "<file>"
    )
    conf_rows = rows[
        (rows["desc"] == "confounds") & (rows["suffix"] == "timeseries") & (rows["ext"] == ".tsv")
    ]
    conf_path = (
        Path(conf_rows["file"].iloc[0])
        if len(conf_rows) == 1
        else func / f"{stem}_desc-confounds_timeseries.tsv"
    )
    if not conf_path.exists():
        raise BrainpipeInputError(
            conf_path, "<file>", "confounds file of this run is missing (fMRIPrep writes "
            "*_desc-confounds_timeseries.tsv next to the preprocessed BOLD)",
        )  # fmt: skip
    surfaces: tuple[Path, ...] = ()
    if opts.surfaces:
        gii = rows[(rows["ext"] == ".func.gii") & (rows["suffix"] == "bold")]
        surfaces = tuple(Path(f) for f in sorted(gii["file"]))
    return bold, mask, conf_path, space_ent, surfaces


#: fMRIPrep < 1.2 confounds columns (its CamelCase names) -> today's names.
LEGACY_CONFOUNDS = {
    "X": "trans_x", "Y": "trans_y", "Z": "trans_z", "RotX": "rot_x", "RotY": "rot_y",
    "RotZ": "rot_z", "CSF": "csf", "WhiteMatter": "white_matter",
    "GlobalSignal": "global_signal", "FramewiseDisplacement": "framewise_displacement",
    "stdDVARS": "std_dvars", "non-stdDVARS": "dvars", "vx-wisestdDVARS": "vx_wise_std_dvars",
}  # fmt: skip
_LEGACY_NUMBERED = (
    ("aCompCor", "a_comp_cor_"), ("tCompCor", "t_comp_cor_"), ("Cosine", "cosine"),
    ("NonSteadyStateOutlier", "non_steady_state_outlier"), ("AROMAAggrComp", "aroma_motion_"),
)  # fmt: skip


def _legacy_files(
    func: Path, key: RunKey, task: str, opts: FmriprepOptions
) -> tuple[Path, Path, Path, str, tuple[Path, ...]]:
    """The same files by fMRIPrep 1.0-1.1 names (``*_bold_space-<space>_preproc.nii.gz``,
    ``*_bold_space-<space>_brainmask.nii.gz``, ``*_bold_confounds.tsv``,
    ``*_bold_space-<space>.[LR].func.gii``; fMRIPrep 1.1's "Outputs" documentation)."""
    bold = _raw_file(func, key, task, f"bold_space-{opts.space}_preproc.nii.gz")
    mask = _raw_file(func, key, task, f"bold_space-{opts.space}_brainmask.nii.gz")
    if not mask.exists():
        raise BrainpipeInputError(mask, "<file>", "brain mask of this run is missing")
    conf = _raw_file(func, key, task, "bold_confounds.tsv")
    if not conf.exists():
        raise BrainpipeInputError(conf, "<file>", "confounds file of this run is missing")
    surfaces: tuple[Path, ...] = ()
    if opts.surfaces:
        surfaces = tuple(
            sorted(func.glob(f"{bold.name.split('_bold_')[0]}_bold_space-fsaverage*.?.func.gii"))
        )
    return bold, mask, conf, f"space-{opts.space}", surfaces


def legacy_confounds(path: Path) -> pd.DataFrame:
    """An fMRIPrep < 1.2 confounds table with today's column names (values unchanged)."""
    table = pd.read_csv(path, sep="\t", na_values=["n/a"])
    names = {}
    for col in table.columns:
        if col in LEGACY_CONFOUNDS:
            names[col] = LEGACY_CONFOUNDS[col]
            continue
        for old, new in _LEGACY_NUMBERED:
            if col.startswith(old) and col[len(old) :].isdigit():
                names[col] = f"{new}{col[len(old) :]}"
    return table.rename(columns=names)


def _legacy_surface_name(name: str) -> str:
    """``..._bold_space-fsaverage5.L.func.gii`` -> ``_hemi-L_space-fsaverage5_bold.func.gii``."""
    m = re.search(r"_bold_space-([A-Za-z0-9]+)\.([LR])\.func\.gii$", name)
    return f"_hemi-{m.group(2)}_space-{m.group(1)}_bold.func.gii" if m else _after_run(name)


def _find_surface_run(
    bids_root: Path, prep: Path, key: RunKey, task: str, opts: FmriprepOptions, rows: pd.DataFrame
) -> RunFiles:
    """Check the files of one run on an fsaverage surface (``opts.space``): both
    hemispheres' GIFTI time series, equal lengths, the space's vertex count, confounds,
    events and a TR."""
    stem = _stem(key, task)
    ses_dir = f"ses-{key.session}" if key.session else ""
    func = Path(prep, f"sub-{key.subject}", ses_dir, "func")
    gii = rows[(rows["ext"] == ".func.gii") & (rows["suffix"] == "bold")]
    hemis: dict[str, Path] = {}
    legacy = False
    for h in HEMIS:
        found = gii[(gii["space"] == opts.space) & (gii["hemi"] == h)]
        expected = func / f"{stem}_hemi-{h}_space-{opts.space}_bold.func.gii"
        old = _raw_file(func, key, task, f"bold_space-{opts.space}.{h}.func.gii")
        if found.empty and old.exists():
            hemis[h], legacy = old, True
        elif found.empty:
            have = sorted({str(s) for s in gii["space"].dropna()})
            what = "hemisphere" if have and opts.space in have else "space"
            raise BrainpipeInputError(
                expected, "space" if what == "space" else "hemi",
                f"fMRIPrep wrote no {h} hemisphere in space {opts.space!r} (config "
                f"source.space) for this run; surface spaces it wrote: {have}",
            )  # fmt: skip
        else:
            hemis[h] = _pick(found, f"{h} hemisphere in {opts.space}", expected, "<file>")
    n_scans: dict[str, int] = {}
    for h, path in hemis.items():
        n_scans[h], n_vertices = gifti_header(path)
        expected_vertices(opts.space, path, n_vertices)
    if n_scans["L"] != n_scans["R"]:
        raise BrainpipeInputError(
            hemis["R"], "DataArray",
            f"{n_scans['R']} volumes; the left hemisphere {hemis['L'].name} has {n_scans['L']}",
        )  # fmt: skip
    if legacy:
        conf_path = _raw_file(func, key, task, "bold_confounds.tsv")
    else:
        conf_rows = rows[
            (rows["desc"] == "confounds")
            & (rows["suffix"] == "timeseries")
            & (rows["ext"] == ".tsv")
        ]
        conf_path = (
            Path(conf_rows["file"].iloc[0])
            if len(conf_rows) == 1
            else func / f"{stem}_desc-confounds_timeseries.tsv"
        )
    if not conf_path.exists():
        raise BrainpipeInputError(conf_path, "<file>", "confounds file of this run is missing")
    raw_func = Path(bids_root, f"sub-{key.subject}", ses_dir, "func")
    events = _raw_file(raw_func, key, task, "events.tsv")
    if not events.exists():
        raise BrainpipeInputError(events, "<file>", "this run has no events file")
    bold_json = Path(str(hemis["L"]).replace(".func.gii", ".json"))
    tr, _ = _sidecar_tr([bold_json, *_raw_sidecars(bids_root, key, task)])
    conf_json = conf_path.with_suffix(".json")
    return RunFiles(
        key=key,
        bold=hemis["L"],
        bold_json=bold_json if bold_json.exists() else None,
        mask=None,
        confounds=conf_path,
        confounds_json=conf_json if conf_json.exists() else None,
        events=events,
        surfaces=(hemis["L"], hemis["R"]),
        tr=tr,
        n_scans=n_scans["L"],
        space_entity=f"space-{opts.space}",
        legacy=legacy,
    )


def _find_run(
    bids_root: Path, prep: Path, key: RunKey, task: str, opts: FmriprepOptions, rows: pd.DataFrame
) -> RunFiles:
    """Check the files of one run; ``rows`` are the index rows of that run."""
    if is_surface_space(opts.space):
        return _find_surface_run(bids_root, prep, key, task, opts, rows)
    stem = _stem(key, task)
    ses_dir = f"ses-{key.session}" if key.session else ""
    func = Path(prep, f"sub-{key.subject}", ses_dir, "func")
    res_ent = f"_res-{opts.res}" if opts.res else ""
    expected = func / f"{stem}_space-{opts.space}{res_ent}_desc-preproc_bold.nii.gz"
    preproc = rows[
        (rows["desc"] == "preproc") & (rows["suffix"] == "bold") & (rows["ext"] == ".nii.gz")
    ]
    legacy_bold = _raw_file(func, key, task, f"bold_space-{opts.space}_preproc.nii.gz")
    if preproc.empty and legacy_bold.exists():
        bold, mask, conf_path, space_ent, surfaces = _legacy_files(func, key, task, opts)
        legacy = True
    else:
        bold, mask, conf_path, space_ent, surfaces = _current_files(
            func, key, task, opts, rows, preproc, expected
        )
        legacy = False
    conf_json = conf_path.with_suffix(".json")
    bold_json = Path(str(bold).replace(".nii.gz", ".json"))
    raw_func = Path(bids_root, f"sub-{key.subject}", ses_dir, "func")
    events = _raw_file(raw_func, key, task, "events.tsv")
    if not events.exists():
        raise BrainpipeInputError(events, "<file>", "this run has no events file")
    tr, tr_source = _sidecar_tr([bold_json, *_raw_sidecars(bids_root, key, task)])
    img = nib.load(bold)
    if img.ndim != 4:
        raise BrainpipeInputError(bold, "shape", f"expected a 4D image, got {img.shape}")
    header_tr = float(img.header.get_zooms()[3])
    if header_tr > 0 and not np.isclose(header_tr, tr, rtol=TR_RTOL):
        raise BrainpipeInputError(
            tr_source, "RepetitionTime",
            f"{tr} s disagrees with the NIfTI header of {bold.name} (pixdim[4] = {header_tr} s)",
        )  # fmt: skip
    mask_img = nib.load(mask)
    if tuple(mask_img.shape[:3]) != tuple(img.shape[:3]) or not np.allclose(
        mask_img.affine, img.affine, atol=1e-3
    ):
        raise BrainpipeInputError(
            mask, "shape", f"grid {mask_img.shape[:3]} differs from the BOLD's {img.shape[:3]}"
        )
    return RunFiles(
        key=key,
        bold=bold,
        bold_json=bold_json if bold_json.exists() else None,
        mask=mask,
        confounds=conf_path,
        confounds_json=conf_json if conf_json.exists() else None,
        events=events,
        surfaces=surfaces,
        tr=tr,
        n_scans=int(img.shape[3]),
        space_entity=space_ent,
        legacy=legacy,
    )


# --------------------------------------------------------------------------- view


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(Path(src).absolute(), dst)


def _stimulus_table(
    per_run: list[tuple[RunFiles, pd.DataFrame]],
    adapter: StimulusAdapter,
    bids_root: Path,
    subjects: list[str],
) -> tuple[pd.DataFrame, dict[str, Path]]:
    """stimuli.tsv rows (stimulus, image, caption, shared) and id -> source file."""
    stim_dir = Path(adapter.stimuli_dir)
    stim_dir = stim_dir if stim_dir.is_absolute() else bids_root / stim_dir
    rows: dict[str, dict[str, Any]] = {}
    sources: dict[str, Path] = {}
    counts: dict[str, dict[str, int]] = {s: {} for s in subjects}
    marked: set[str] = set()
    for rf, events in per_run:
        for rec in events.to_dict("records"):
            stim = str(rec["stimulus"])
            counts[rf.key.subject][stim] = counts[rf.key.subject].get(stim, 0) + 1
            if isinstance(adapter.test, dict):
                col = adapter.test["column"]
                if col not in rec:
                    raise BrainpipeInputError(
                        rf.events, col, "column named in stimuli.test is missing"
                    )
                if str(rec[col]) in {str(v) for v in adapter.test["values"]}:
                    marked.add(stim)
            if stim in rows:
                continue
            rel = adapter.image_path(rec, rf.events)
            src = stim_dir / rel
            if not src.exists():
                raise BrainpipeInputError(
                    rf.events, adapter.column,
                    f"stimulus {rec[adapter.column]!r}: its file {src} is missing "
                    "(registry stimuli.dir / stimuli.image, or config source.stimuli_dir)",
                )  # fmt: skip
            image = f"images/{rel}"
            rows[stim] = {
                "stimulus": stim,
                "image": image,
                "caption": adapter.caption_of(rec, rf.events),
            }
            sources[stim] = src
    if adapter.test == "repeated":
        shared = {s for s in rows if all(counts[sub].get(s, 0) > 1 for sub in subjects)}
    else:
        shared = marked
    table = pd.DataFrame(list(rows.values()), columns=["stimulus", "image", "caption"])
    table["shared"] = table["stimulus"].isin(shared).astype(int)
    return table, sources


def _roi_masks(
    opts: FmriprepOptions, bids_root: Path, subject: str, ref_img: nib.Nifti1Image
) -> dict[str, np.ndarray]:
    """Each configured ROI as a boolean volume on ``ref_img``'s grid (nearest neighbour)."""
    from nilearn import datasets, image

    out = {}
    for name, spec in opts.rois.items():
        if "nilearn" in spec:
            src = getattr(datasets, NILEARN_MASKS[spec["nilearn"]])(resolution=2)
            imgs = [src]
        else:
            files = spec["file"] if isinstance(spec["file"], list) else [spec["file"]]
            imgs = []
            for f in files:
                path = Path(str(f).format(subject=subject))
                path = path if path.is_absolute() else bids_root / path
                if not path.exists():
                    raise BrainpipeInputError(
                        path, f"source.rois.{name}.file", "ROI file is missing"
                    )
                imgs.append(nib.load(path))
        total = np.zeros(ref_img.shape[:3], dtype=bool)
        for img in imgs:
            res = image.resample_to_img(
                img, ref_img, interpolation="nearest", force_resample=True, copy_header=True
            )
            data = np.asarray(res.dataobj)
            labels = spec.get("labels")
            total |= np.isin(data, labels) if labels else data > (0.5 if "nilearn" in spec else 0)
        if not total.any():
            raise BrainpipeInputError(
                f"source.rois.{name}", "file", f"ROI is empty on sub-{subject}'s BOLD grid"
            )
        out[name] = total
    return out


#: ROI of a surface view holding every vertex (the cortex sampled by fMRIPrep; the medial
#: wall's constant vertices are dropped as dead by preprocess), so ``all`` is the cortex.
CORTEX_ROI = "cortex"


def _surface_rois(
    opts: FmriprepOptions, bids_root: Path, subject: str
) -> dict[str, dict[str, np.ndarray]]:
    """Each configured ROI as per-hemisphere vertex masks (plus :data:`CORTEX_ROI`)."""
    n_vertices = FSAVERAGE_VERTICES[opts.space]
    out = {CORTEX_ROI: {h: np.ones(n_vertices, dtype=bool) for h in HEMIS}}
    for name, spec in opts.rois.items():
        per_hemi = {}
        for h, fs_hemi in HEMIS.items():
            files = spec["file"]
            text = str(files[h]) if isinstance(files, dict) else str(files)
            path = Path(text.format(subject=subject, hemi=fs_hemi))
            path = path if path.is_absolute() else bids_root / path
            per_hemi[h] = read_surface_roi(
                path, n_vertices, spec.get("labels"), f"source.rois.{name}.file"
            )
        if not any(m.any() for m in per_hemi.values()):
            raise BrainpipeInputError(
                f"source.rois.{name}", "file", f"ROI has no vertex on {opts.space}"
            )
        out[name] = per_hemi
    return out


def _save_mask(mask: np.ndarray, affine: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(mask.astype(np.uint8), affine)
    img.header.set_data_dtype(np.uint8)
    nib.save(img, path)


def build_view(
    dest: str | Path,
    bids_root: str | Path,
    fmriprep_root: str | Path,
    subjects: list[str],
    sessions: list[str],
    runs: list[str],
    task: str,
    opts: FmriprepOptions,
) -> Path:
    """Check a BIDS + fMRIPrep dataset and lay it out in ``dest`` for the pipeline (atomic).

    Every file is checked (:func:`find_runs`, events, stimulus files, ROIs) before
    ``dest`` appears; time series are linked, not copied.
    """
    from brainpipe.datasets.openneuro import check_bids_root, check_fmriprep

    bids_root = check_bids_root(bids_root, subjects).absolute()
    fmriprep_root = Path(fmriprep_root).absolute()
    check_fmriprep(fmriprep_root)
    runs_found = find_runs(bids_root, fmriprep_root, subjects, sessions, runs, task, opts)
    per_run = [(rf, read_raw_events(rf.events, opts.adapter)) for rf in runs_found]
    for rf, events in per_run:
        late = events["onset"] >= rf.n_scans * rf.tr
        if late.any():
            raise BrainpipeInputError(
                rf.events, "onset", f"onset {events['onset'][late].iloc[0]} s is after the run's "
                f"end ({rf.n_scans} scans x {rf.tr} s)",
            )  # fmt: skip
    table, sources = _stimulus_table(per_run, opts.adapter, bids_root, subjects)
    with atomic_path(dest) as tmp:
        tmp.mkdir(parents=True)
        desc = json.loads((bids_root / "dataset_description.json").read_text() or "{}")
        # the space tells the later stages whether the view is a surface (BidsLayout.surface_space)
        desc["brainpipe_view"] = {
            "bids_root": str(bids_root), "fmriprep": str(fmriprep_root),
            "space": opts.space, "res": opts.res, "task": task,
        }  # fmt: skip
        (tmp / "dataset_description.json").write_text(json.dumps(desc, indent=2))
        layout = BidsLayout(tmp, task)
        surface = is_surface_space(opts.space)
        masks: dict[str, np.ndarray] = {}
        ref: dict[str, nib.Nifti1Image] = {}
        for rf, events in per_run:
            key = rf.key
            stem = layout.bold(key).name[: -len("_bold.nii.gz")]
            func = layout.bold(key).parent
            if surface:  # the hemispheres under fMRIPrep's names: the runs of a surface view
                for h, gii in zip(HEMIS, rf.surfaces, strict=True):
                    _link(gii, layout.surface_bold(key, h))
            else:
                _link(rf.bold, layout.bold(key))
                _link(rf.bold, func / f"{stem}_{rf.space_entity}_desc-preproc_bold.nii.gz")
            conf_dst = func / f"{stem}_desc-confounds_timeseries.tsv"
            if rf.legacy:  # today's column names, so nilearn's strategies apply
                legacy_confounds(rf.confounds).to_csv(conf_dst, sep="\t", index=False, na_rep="n/a")
            else:
                _link(rf.confounds, conf_dst)
            if rf.confounds_json is not None:
                _link(rf.confounds_json, func / f"{stem}_desc-confounds_timeseries.json")
            for gii in rf.surfaces if not surface else ():
                name = _legacy_surface_name(gii.name) if rf.legacy else _after_run(gii.name)
                _link(gii, func / f"{stem}{name}")
            read_from = [*rf.surfaces] if surface else [rf.bold, rf.mask]
            sidecar = {
                "RepetitionTime": rf.tr,
                "Sources": [str(p) for p in [*read_from, rf.confounds, rf.events]],
            }
            layout.sidecar(key).write_text(json.dumps(sidecar, indent=2))
            events.to_csv(layout.events(key), sep="\t", index=False, float_format="%.6f")
            if surface:
                continue
            m_img = nib.load(rf.mask)
            m = np.asarray(m_img.dataobj) > 0
            if key.subject in masks:
                if masks[key.subject].shape != m.shape:
                    raise BrainpipeInputError(
                        rf.mask,
                        "shape",
                        f"grid {m.shape} differs from sub-{key.subject}'s other runs",
                    )
                masks[key.subject] &= m
            else:
                masks[key.subject] = m
                ref[key.subject] = m_img
        for sub in subjects if surface else ():
            for name, per_hemi in _surface_rois(opts, bids_root, sub).items():
                for h, mask in per_hemi.items():
                    write_vertex_mask(mask, layout.surface_roi(sub, name, h))
        for sub, m in masks.items():
            _save_mask(m, ref[sub].affine, layout.brain_mask(sub))
            for name, roi in _roi_masks(opts, bids_root, sub, ref[sub]).items():
                _save_mask(roi & m, ref[sub].affine, layout.roi_mask(sub, name))
        layout.stimuli_dir.mkdir(parents=True)
        for stim, src in sources.items():
            _link(src, layout.stimuli_dir / table.loc[table["stimulus"] == stim, "image"].iloc[0])
        table.to_csv(layout.stimuli_table, sep="\t", index=False)
        log.info(
            "%d runs of %d subjects (%s), %d stimuli (%d test)", len(per_run), len(subjects),
            opts.space, len(table), int(table["shared"].sum()),
        )  # fmt: skip
    return Path(dest)


def derivative_filter(opts: FmriprepOptions) -> Callable[[str], bool]:
    """Which ``derivatives/`` keys of an accession to fetch: fMRIPrep's, func, ``opts.space``.

    Kept: ``derivatives/fmriprep/dataset_description.json`` and, under ``func/``, the files
    brainpipe reads (:data:`READ_SUFFIXES`) without a ``space-`` entity (confounds) or in
    ``opts.space`` (and ``fsaverage*`` surfaces if ``opts.surfaces``). Anatomical outputs,
    boldrefs, transforms, reports and other spaces stay remote.
    """

    def keep(rel: str) -> bool:
        parts = rel.split("/")
        if len(parts) < 2 or parts[1] != "fmriprep":
            return False
        if parts[2:] == ["dataset_description.json"]:
            return True
        name = parts[-1]
        if "func" not in parts or not name.endswith(READ_SUFFIXES):
            return False
        space = re.search(r"_space-([A-Za-z0-9]+)", name)
        if space is None:
            return True
        return space.group(1) == opts.space or (
            opts.surfaces and space.group(1).startswith("fsaverage")
        )

    return keep


def fmriprep_folder(bids_root: Path, given: str | Path | None) -> Path:
    """The fMRIPrep folder: ``given`` (relative to the BIDS root) or ``derivatives/fmriprep``."""
    if given is None:
        return bids_root / "derivatives" / "fmriprep"
    path = Path(given)
    return path if path.is_absolute() else bids_root / path
