"""A catalog of malformed and changed inputs: each stops the real workflow before preprocess.

One generated tiny dataset is shared by the cases. Cases in one subject's files (BOLD,
sidecars, events, masks) each damage their own copy of subject 01 (``sub-c01``,
``sub-c02``, ...), and one real Snakemake run (``--keep-going``) drives every copy towards
its ``preproc.zarr``: each copy's check fails on its own. An undamaged copy (``sub-c00``)
reaches ``preproc.zarr`` in the same run, so the target is one preprocess would have
written. Cases in the shared stimuli and config values get a run each (config cases stop
while the DAG is built, before any job).

Each case asserts: the run exits non-zero and its subject's job is reported failed; the
message names the file (or ``config``) and the field; it was raised before preprocess (no
``preproc.zarr`` for the damaged copy); nothing complete-looking is left (no manifest of
the failed check, no temporary store); numbers read as numbers (no ``np.float64(...)``);
one traceback at most per error.

With ``BRAINPIPE_CATALOG_TSV=path`` the cases' stage and message are appended there (the
catalog table of issue 20's evidence).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from brainpipe.bids import BidsLayout, RunKey

from .conftest import ROOT, TINY, run_workflow

pytestmark = pytest.mark.integration

DATA = Path("data/synthetic")
LAYOUT = BidsLayout(DATA)
STIMULI = LAYOUT.stimuli_table
IMAGE = DATA / "stimuli/images/stim-0003.png"


def catalog_config(**overrides) -> dict:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config.update(
        subjects=["01"],
        sessions=["01"],
        runs=["01", "02"],
        rois=["V1", "LOC"],
        feature_models=["gabor"],
        models=["ridge"],
        model_params={},
        align={"methods": ["procrustes"], "n_components": 4, "roi": ["V1", "LOC"]},
        synthetic=dict(TINY),
    )
    config.update(overrides)
    return config


# --- where a case's damage goes (relative to the working directory) -------------------


def key(sub: str) -> RunKey:
    return RunKey(sub, "01", "02")


def bold(sub: str) -> Path:
    return LAYOUT.bold(key(sub))


def events(sub: str) -> Path:
    return LAYOUT.events(key(sub))


def sidecar(sub: str) -> Path:
    return LAYOUT.sidecar(key(sub))


def brain_mask(sub: str) -> Path:
    return LAYOUT.brain_mask(sub)


def roi_v1(sub: str) -> Path:
    return LAYOUT.roi_mask(sub, "V1")


def stimuli(sub: str) -> Path:
    return STIMULI


def image(sub: str) -> Path:
    return IMAGE


Damage = Callable[[Path, str], None]  # (working directory, subject label)


# --- damage helpers -------------------------------------------------------------------


def _table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def _write_table(path: Path, table: pd.DataFrame) -> None:
    path.write_text(table.to_csv(sep="\t", index=False))


def _set(table: pd.DataFrame, row: int, col: str, value) -> pd.DataFrame:
    table.loc[row, col] = value
    return table


def edit_table(where, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Damage:
    def damage(work: Path, sub: str) -> None:
        path = work / where(sub)
        _write_table(path, edit(_table(path)))

    return damage


def edit_nifti(where, edit: Callable[[nib.Nifti1Image], nib.Nifti1Image]) -> Damage:
    def damage(work: Path, sub: str) -> None:
        path = work / where(sub)
        img = nib.load(path)
        img = nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header)
        nib.save(edit(img), path)

    return damage


def _header(field: str, value) -> Callable[[nib.Nifti1Image], nib.Nifti1Image]:
    def edit(img):
        img.header[field] = value
        return img

    return edit


def _nan_volumes(fraction: float):
    def edit(img):
        data = np.asarray(img.dataobj, dtype=np.float32)
        n = int(np.ceil(fraction * data.shape[3]))
        data[..., 3 : 3 + n] = np.nan
        out = nib.Nifti1Image(data, img.affine, img.header)
        out.header.set_data_dtype(np.float32)
        return out

    return edit


def _shift_affine(img):
    affine = img.affine.copy()
    affine[0, 3] += 2.0
    return nib.Nifti1Image(np.asarray(img.dataobj), affine, img.header)


def _crop(img):
    return nib.Nifti1Image(np.asarray(img.dataobj)[:-1], img.affine, img.header)


def raw_header_float(where, offset: int, value: float) -> Damage:
    """Write a float32 into the NIfTI-1 header bytes (nibabel would reset scaling on save)."""

    def damage(work: Path, sub: str) -> None:
        path = work / where(sub)
        raw = bytearray(gzip.decompress(path.read_bytes()))
        raw[offset : offset + 4] = np.float32(value).tobytes()
        path.write_bytes(gzip.compress(bytes(raw)))

    return damage


def _complex(img):
    out = nib.Nifti1Image(np.asarray(img.dataobj).astype(np.complex64), img.affine)
    out.header.set_zooms(img.header.get_zooms())
    return out


def _one_volume(img):
    return nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine)


def _zero_mask(img):
    return nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine, img.header)


def truncate(where, keep: float) -> Damage:
    def damage(work: Path, sub: str) -> None:
        path = work / where(sub)
        raw = path.read_bytes()
        path.write_bytes(raw[: int(len(raw) * keep)])

    return damage


def short_data(work: Path, sub: str) -> None:
    """A whole gzip stream whose NIfTI lacks its last volume's bytes."""
    path = work / bold(sub)
    img = nib.load(path)
    per_volume = int(np.prod(img.shape[:3])) * img.get_data_dtype().itemsize
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-per_volume]))


def symlink_loop(where) -> Damage:
    def damage(work: Path, sub: str) -> None:
        path = work / where(sub)
        path.unlink()
        os.symlink(path.name, path)

    return damage


def no_permission(where) -> Damage:
    def damage(work: Path, sub: str) -> None:
        (work / where(sub)).chmod(0o000)

    return damage


def bad_bytes(where, find: bytes) -> Damage:
    def damage(work: Path, sub: str) -> None:
        path = work / where(sub)
        raw = path.read_bytes()
        assert find in raw
        path.write_bytes(raw.replace(find, find + b"\xe9\xff", 1))

    return damage


def empty(where) -> Damage:
    def damage(work: Path, sub: str) -> None:
        (work / where(sub)).write_bytes(b"")

    return damage


def write_text(where, text: str) -> Damage:
    def damage(work: Path, sub: str) -> None:
        (work / where(sub)).write_text(text)

    return damage


def remove(where) -> Damage:
    def damage(work: Path, sub: str) -> None:
        (work / where(sub)).unlink()

    return damage


def sidecar_tr(value: float) -> Damage:
    def damage(work: Path, sub: str) -> None:
        path = work / sidecar(sub)
        meta = json.loads(path.read_text())
        meta["RepetitionTime"] = value
        path.write_text(json.dumps(meta))

    return damage


def nothing(work: Path, sub: str) -> None:
    pass


def run_missing(work: Path, sub: str) -> None:
    """The subject has one run fewer than the config lists (mismatched run counts)."""
    for path in (bold(sub), sidecar(sub), events(sub)):
        (work / path).unlink()


@dataclass(frozen=True)
class Case:
    name: str
    damage: Damage
    where: Callable[[str], Path] | None  # the file the message names (None: "config")
    field: str
    says: str  # a further piece of the message
    config: dict | None = None
    stages: tuple[str, ...] = ("validate_inputs",)  # where it may be caught ("DAG": no job)

    @property
    def shared(self) -> bool:
        """Damages something every subject shares (or the config): a run of its own."""
        return self.where in (None, stimuli, image)


CASES = [
    # events tables
    Case("events: duplicated row",
         edit_table(events, lambda t: pd.concat([t.iloc[:3], t.iloc[2:]])),
         events, "onset", "duplicate trials",
         stages=("validate_events",)),
    Case("events: overlapping trials",
         edit_table(events, lambda t: _set(t, 3, "onset", f"{float(t.onset[2]) + 1.0:.3f}")),
         events, "duration", "overlaps the next trial",
         stages=("validate_events",)),
    Case("events: unsorted onsets",
         edit_table(events, lambda t: t.iloc[[0, 1, 3, 2] + list(range(4, len(t)))]),
         events, "onset", "expected onsets in ascending order",
         stages=("validate_events",)),
    Case("events: negative onset", edit_table(events, lambda t: _set(t, 0, "onset", "-2.0")),
         events, "onset", "must be >= 0",
         stages=("validate_events",)),
    Case("events: text in a number column (wrong dtype)",
         edit_table(events, lambda t: _set(t, 4, "duration", "three")),
         events, "duration", "expected a finite number of seconds, got 'three'",
         stages=("validate_events",)),
    Case("events: infinite onset", edit_table(events, lambda t: _set(t, 5, "onset", "inf")),
         events, "onset", "expected a finite number",
         stages=("validate_events",)),
    Case("events: column missing", edit_table(events, lambda t: t.drop(columns="stimulus")),
         events, "stimulus", "column is missing",
         stages=("validate_events",)),
    Case("events: onset after the run's end",
         edit_table(events, lambda t: _set(t, 23, "onset", "999")),
         events, "onset", "after the run's end",
         stages=("validate_events",)),
    Case("events: unknown stimulus id",
         edit_table(events, lambda t: _set(t, 2, "stimulus", "stim-9999")),
         events, "stimulus", "'stim-9999' has no image",
         stages=("validate_events",)),
    Case("events: non-UTF-8 bytes", bad_bytes(events, b"image"),
         events, "<encoding>", "expected UTF-8 text",
         stages=("validate_events",)),
    Case("events: empty file", empty(events), events, "<file>", "is empty (0 bytes)",
         stages=("validate_events",)),
    Case("events: header only", write_text(events, "onset\tduration\ttrial_type\tstimulus\n"),
         events, "<file>", "header but no trials",
         stages=("validate_events",)),
    # BOLD runs and their sidecars
    Case("bold: truncated .nii.gz", truncate(bold, 0.6),
         bold, "<gzip>", "does not decompress completely"),
    Case("bold: header announces more data than the file has", short_data,
         bold, "<data>", "header announces"),
    Case("bold: affine differs from the subject's other images", edit_nifti(bold, _shift_affine),
         bold, "affine (srow/qform)", "differs from the subject's brain mask"),
    Case("bold: volume shape differs", edit_nifti(bold, _crop),
         bold, "shape", "differs from the brain mask"),
    Case("bold: NaN voxel size in the header",
         edit_nifti(bold, _header("pixdim", [1, 8, np.nan, 8, 1.6, 0, 0, 0])),
         bold, "pixdim", "expected finite numbers"),
    Case("bold: infinite scl_slope", raw_header_float(bold, 112, np.inf),
         bold, "scl_slope", "expected a finite number"),
    Case("bold: complex samples (wrong dtype)", edit_nifti(bold, _complex),
         bold, "datatype", "expected integers or floats"),
    Case("bold: too many NaN volumes to censor", edit_nifti(bold, _nan_volumes(0.3)),
         bold, "<data>", "can be censored"),
    Case("bold: a run without signal (every voxel constant)",
         edit_nifti(bold, lambda img: nib.Nifti1Image(
             np.full(img.shape, 100, np.int16), img.affine, img.header)),
         brain_mask, "<data>", "is dead"),
    Case("bold: 3D image where a run is expected", edit_nifti(bold, _one_volume),
         bold, "shape", "expected a 4D image"),
    Case("bold: symlink loop", symlink_loop(bold), bold, "<file>", "symlink loop"),
    Case("bold: no read permission", no_permission(bold), bold, "<file>", "not readable"),
    Case("bold: header TR differs from the sidecar",
         edit_nifti(bold, _header("pixdim", [1, 8, 8, 8, 2.0, 0, 0, 0])),
         bold, "pixdim[4] (TR)", "TR is 2.0 s"),
    Case("sidecar: TR differs from the config", sidecar_tr(2.0),
         sidecar, "RepetitionTime", "the config key 'tr'"),
    Case("sidecar: not JSON", write_text(sidecar, "{RepetitionTime: 1.6"),
         sidecar, "<file>", "not valid JSON"),
    Case("runs: subject has fewer runs than the config lists", run_missing,
         bold, "<file>", "run missing",
         stages=("validate_inputs", "validate_events")),
    # masks
    Case("brain mask: selects no voxel", edit_nifti(brain_mask, _zero_mask),
         brain_mask, "<data>", "mask selects no voxel",
         stages=("validate_inputs", "validate_events")),
    Case("ROI mask: affine differs", edit_nifti(roi_v1, _shift_affine),
         roi_v1, "affine (srow/qform)", "differs from the subject's brain mask",
         stages=("validate_events",)),
    Case("ROI mask: truncated .nii.gz", truncate(roi_v1, 0.5),
         roi_v1, "<gzip>", "does not decompress completely",
         stages=("validate_events",)),
    # stimuli (shared by every subject: a run each)
    Case("stimuli.tsv: non-UTF-8 bytes", bad_bytes(stimuli, b"diamond"),
         stimuli, "<encoding>", "expected UTF-8 text",
         stages=("validate_events", "validate_stimuli")),
    Case("stimuli.tsv: duplicate stimulus id",
         edit_table(stimuli, lambda t: pd.concat([t, t.iloc[[4]]])),
         stimuli, "stimulus", "duplicate stimulus id",
         stages=("validate_events", "validate_stimuli")),
    Case("stimuli.tsv: shared flag not 0/1",
         edit_table(stimuli, lambda t: _set(t, 1, "shared", "yes")),
         stimuli, "shared", "expected 0 or 1", stages=("validate_events", "validate_stimuli")),
    Case("image: zero bytes", empty(image), image, "<file>", "is empty (0 bytes)",
         stages=("validate_events", "validate_stimuli")),
    Case("image: truncated PNG", truncate(image, 0.5), image, "<image>", "cannot be decoded",
         stages=("validate_stimuli",)),
    Case("image: symlink loop", symlink_loop(image), image, "<file>", "symlink loop",
         stages=("validate_events", "validate_stimuli")),
    Case("image: listed but missing", remove(image), stimuli, "image",
         "stim-0003.png is missing", stages=("validate_events", "validate_stimuli")),
    # config values checked against the dataset and the registry while the DAG is built
    Case("config: ROI the dataset does not have", nothing, None, "rois.1",
         "ROI 'FFA' is not in dataset 'synthetic'", config={"rois": ["V1", "FFA"]},
         stages=("DAG",)),
    Case("config: negative ridge penalty", nothing, None, "model_params.ridge.alphas.0",
         "got -1; expected a number > 0",
         config={"model_params": {"ridge": {"alphas": [-1, 10]}}}, stages=("DAG",)),
    Case("config: split leaves no test stimuli", nothing, None,
         "splits.shared_train_fraction", "leaving 0 test stimuli",
         config={"splits": {"shared_train_fraction": 0.95}}, stages=("DAG",)),
    Case("config: alignment ROI the dataset does not have", nothing, None, "align.roi.1",
         "ROI 'PPA' is not in dataset",
         config={"align": {"methods": ["procrustes"], "roi": ["V1", "PPA"]}}, stages=("DAG",)),
    Case("config: model ROI the dataset does not have", nothing, None,
         "model_params.ridge.rois.0", "ROI 'V9' is not in dataset",
         config={"model_params": {"ridge": {"rois": ["V9"]}}}, stages=("DAG",)),
]  # fmt: skip
SUBJECT_CASES = [c for c in CASES if not c.shared]
SHARED_CASES = [c for c in CASES if c.shared]


def _label(case: Case) -> str:
    return f"c{SUBJECT_CASES.index(case) + 1:02d}"


def _copy_subject(data: Path, src: str, dst: str) -> None:
    """Copy subject ``src`` of a dataset to a new label (file names renamed too)."""
    for path in sorted(data.rglob(f"*sub-{src}*")):
        rel = path.relative_to(data)
        if any(f"sub-{src}" in part for part in rel.parts[:-1]):
            continue  # inside a folder copied below
        target = data / str(rel).replace(f"sub-{src}", f"sub-{dst}")
        if path.is_dir():
            shutil.copytree(path, target)
            for inner in sorted(target.rglob(f"*sub-{src}*"), reverse=True):
                inner.rename(inner.with_name(inner.name.replace(f"sub-{src}", f"sub-{dst}")))
        else:
            shutil.copy2(path, target)


@pytest.fixture(scope="module")
def base(tiny_dataset, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("catalog-base")
    shutil.copytree(tiny_dataset, root / DATA, symlinks=True)
    return root


def _copy_dataset(base: Path, work: Path) -> None:
    shutil.copytree(base / DATA, work / DATA, symlinks=True)
    # newer than the workflow's scripts, or Snakemake would regenerate it ("code changed")
    os.utime(work / DATA)


def _case_dir(base: Path, tmp_path: Path) -> Path:
    work = tmp_path / "work"
    _copy_dataset(base, work)
    return work


def _restore_permissions(work: Path) -> None:
    for path in work.rglob("*"):  # let pytest remove what a case made unreadable
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


def _logs(work: Path) -> dict[str, str]:
    folder = work / "logs" / "synthetic"
    logs = sorted(folder.rglob("*.log"))
    return {str(p.relative_to(folder)): p.read_text(errors="replace") for p in logs}


def _record(case: Case, stage: str, message: str) -> None:
    out = os.environ.get("BRAINPIPE_CATALOG_TSV")
    if out:
        with open(out, "a") as fh:
            fh.write(f"{case.name}\t{stage}\t{message}\n")


def _message(case: Case, where: str, text: str) -> str:
    match = re.search(rf"{re.escape(where)}: field '{re.escape(case.field)}': [^\n]*", text)
    assert match, f"{case.name}: no message naming {where}, field {case.field!r}:\n{text[-3000:]}"
    message = match.group(0)
    assert case.says in message, message
    return message


def _nothing_complete(work: Path, sub: str, stage: str) -> None:
    results = work / "results" / "synthetic"
    assert not (results / f"sub-{sub}" / "preproc.zarr").exists()
    if stage in ("validate_inputs", "validate_events"):
        name = "inputs" if stage == "validate_inputs" else "events"
        assert not (results / f"sub-{sub}" / f"{name}_manifest.json").exists()
    if stage == "validate_stimuli":
        assert not (results / "stimuli_manifest.json").exists()
    assert not list(work.rglob(".*.tmp-*"))


@pytest.fixture(scope="module")
def subject_batch(base, tmp_path_factory):
    """Every subject-level case in its own copy of subject 01, checked in one real run."""
    work = tmp_path_factory.mktemp("catalog-subjects")
    _copy_dataset(base, work)
    labels = ["c00"] + [_label(c) for c in SUBJECT_CASES]
    for label in labels:
        _copy_subject(work / DATA, "01", label)
    for case in SUBJECT_CASES:
        case.damage(work, _label(case))
    config = catalog_config(subjects=labels)
    targets = [f"results/synthetic/sub-{s}/preproc.zarr" for s in labels]
    try:
        result = run_workflow(work, config, "--keep-going", *targets, timeout=3600)
    finally:
        _restore_permissions(work)
    return work, result


def test_undamaged_copy_reaches_preprocess_in_the_same_run(subject_batch):
    work, result = subject_batch
    assert (work / "results/synthetic/sub-c00/preproc.zarr").is_dir(), result.stderr[-3000:]
    made = sorted(p.parent.name for p in work.glob("results/synthetic/sub-*/preproc.zarr"))
    assert made == ["sub-c00"]


@pytest.mark.parametrize("case", SUBJECT_CASES, ids=[c.name for c in SUBJECT_CASES])
def test_subject_catalog(case: Case, subject_batch):
    work, result = subject_batch
    sub = _label(case)
    printed = result.stdout + result.stderr
    assert result.returncode != 0
    logs = _logs(work)
    where = str(case.where(sub))
    found = [
        stage for stage in case.stages
        if re.search(rf"{re.escape(where)}: field '{re.escape(case.field)}'",
                     logs.get(f"{stage}/sub-{sub}.log", ""))
    ]  # fmt: skip
    assert found, f"{case.name}: not in the logs of {case.stages}:\n{printed[-3000:]}"
    stage = found[0]
    failed = (
        rf"Error in rule {stage}:\n(?:    .*\n)*?    log: logs/synthetic/{stage}/sub-{sub}\.log"
    )
    assert re.search(failed, printed), printed[-3000:]  # Snakemake reports this job failed
    log = logs[f"{stage}/sub-{sub}.log"]
    message = _message(case, where, log)
    assert message in printed  # Snakemake shows the failed job's log
    assert "np.float" not in log and "np.int" not in log
    assert log.count("Traceback (most recent call last)") <= 1
    _nothing_complete(work, sub, stage)
    _record(case, stage, message.replace(f"sub-{sub}", "sub-01"))


@pytest.mark.parametrize("case", SHARED_CASES, ids=[c.name for c in SHARED_CASES])
def test_shared_catalog(case: Case, base, tmp_path):
    work = _case_dir(base, tmp_path)
    case.damage(work, "01")
    try:
        config = catalog_config(**(case.config or {}))
        result = run_workflow(work, config, "results/synthetic/sub-01/preproc.zarr", timeout=300)
    finally:
        _restore_permissions(work)
    printed = result.stdout + result.stderr
    logs = _logs(work) if (work / "logs").exists() else {}
    assert result.returncode != 0, printed[-3000:]
    where = "config" if case.where is None else str(case.where("01"))
    # the logs first: two jobs failing at once can interleave their lines on stderr
    message = _message(case, where, "".join(logs.values()) + printed)
    stage = next((name.split("/")[0].removesuffix(".log") for name, text in logs.items()
                  if message in text), "DAG")  # fmt: skip
    assert stage in case.stages, (stage, message)
    if stage == "DAG":  # refused while the DAG was built: no job ran at all
        assert not (work / "results").exists() and not logs
    assert "np.float" not in printed and "np.int" not in printed
    assert printed.count("Traceback (most recent call last)") <= 1
    _nothing_complete(work, "01", stage)
    _record(case, stage, message)


def test_catalog_is_large_enough():
    assert len(CASES) >= 25
    assert len({c.name for c in CASES}) == len(CASES)


def test_stale_temporary_store_is_removed_when_its_job_reruns(base, tmp_path):
    """A killed job's hidden ``.NAME.tmp-*`` folder goes when the job runs again."""
    work = _case_dir(base, tmp_path)
    stale = work / "results/synthetic/sub-01/.preproc.zarr.tmp-deadbeef"
    (stale / "bold").mkdir(parents=True)
    (stale / "bold" / "c0").write_bytes(b"\0" * 1024)
    result = run_workflow(work, catalog_config(), "results/synthetic/sub-01/preproc.zarr")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not stale.exists()
    assert not list(work.rglob(".*.tmp-*"))
    log = (work / "logs/synthetic/preprocess/sub-01.log").read_text()
    assert "removed 1 stale temporary copy" in log and stale.name in log


def test_registry_entries_come_from_the_workflow_not_the_package(tmp_path):
    """An entry added to the workflow's config/datasets is found (the DAG builds with it)."""
    checkout = tmp_path / "checkout"
    skip = shutil.ignore_patterns(".venv", ".git", "results", "data", "logs", ".snakemake")
    shutil.copytree(ROOT, checkout, ignore=skip)
    entry = yaml.safe_load((ROOT / "config/datasets/synthetic.yaml").read_text())
    (checkout / "config/datasets/mysynth.yaml").write_text(yaml.safe_dump(entry))
    config = catalog_config(dataset="mysynth")
    work = tmp_path / "work"
    work.mkdir()
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(checkout / "Snakefile"),
         "--directory", str(work), "--configfile", str(work / "config.yaml"), "-n",
         "results/mysynth/sub-01/inputs_manifest.json"],
        capture_output=True, text=True, cwd=work,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "rule download" in result.stdout or "checkpoint download" in result.stdout
    assert not (ROOT / "config/datasets/mysynth.yaml").exists()


def _planned(output: str) -> list[tuple[str, str]]:
    """(rule, wildcards) of each job a dry run lists."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?(?:rule|checkpoint) \w+:)", output):
        head = re.match(r"(?:local)?(?:rule|checkpoint) (\w+):", block.strip())
        if head:
            wildcards = re.search(r"wildcards: (.*)", block)
            jobs.append((head.group(1), wildcards.group(1) if wildcards else ""))
    return jobs


def test_edited_raw_file_reruns_exactly_its_dependants(base, tmp_path):
    """After a full run, editing one events file reruns its subject's check, betas and what
    reads them; preprocess, features and the other subject stay; the summary changes."""
    work = _case_dir(base, tmp_path)
    config = catalog_config(
        subjects=["01", "02"],
        sessions=["01", "02"],
        rois=["V1"],
        betas={"method": "lsa", "voxel_chunk": 4096},
        align={"methods": ["procrustes"], "n_components": 4, "roi": ["V1"]},
    )
    first = run_workflow(work, config)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = work / "results/synthetic/summary.tsv"
    before = pd.read_csv(summary, sep="\t", dtype={"subject": str})
    nothing = run_workflow(work, config, "-n")
    assert "Nothing to be done" in nothing.stdout + nothing.stderr

    events_file = work / LAYOUT.events(RunKey("01", "01", "01"))
    table = _table(events_file)
    table.loc[[0, 1], "stimulus"] = table.loc[[1, 0], "stimulus"].to_numpy()  # swap two labels
    _write_table(events_file, table)

    plan = run_workflow(work, config, "-n")
    jobs = _planned(plan.stdout)
    rules = sorted(rule for rule, _ in jobs)
    assert rules == sorted(
        ["validate_events", "betas", "align", "align_scores", "train", "evaluate", "summary",
         "report", "all"]
    ), jobs  # fmt: skip
    assert all("subject=02" not in wc for _, wc in jobs), jobs
    assert f"Updated input files: {events_file.relative_to(work)}" in plan.stdout

    rerun = run_workflow(work, config)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = pd.read_csv(summary, sep="\t", dtype={"subject": str})
    labels = ["subject", "roi", "model", "features"]
    merged = before.merge(after, on=labels, suffixes=("_before", "_after"))
    changed = merged["mean_r_before"] != merged["mean_r_after"]
    assert changed[merged["subject"] == "01"].all()
    assert not changed[merged["subject"] == "02"].any()
    assert "Nothing to be done" in run_workflow(work, config, "-n").stdout
