"""Bad input stops the pipeline before any compute, with a message naming the file and field."""

import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainpipe.bids import BidsLayout, RunKey
from brainpipe.errors import BrainpipeInputError
from brainpipe.validation import validate_dataset

from .conftest import TINY

SUBJECTS = ["01", "02"]
SESSIONS = ["01", "02"]
RUNS = ["01", "02"]
TR = 1.6
KEY = RunKey("02", "01", "02")


@pytest.fixture
def dataset(tiny_dataset, tmp_path):
    root = tmp_path / "synthetic"
    shutil.copytree(tiny_dataset, root)
    return root


def _validate(root, **overrides):
    args = dict(subjects=SUBJECTS, sessions=SESSIONS, runs=RUNS, tr=TR)
    args.update(overrides)
    return validate_dataset(root, **args)


def _edit_events(root, edit):
    path = BidsLayout(root).events(KEY)
    events = pd.read_csv(path, sep="\t", dtype={"stimulus": str})
    edit(events).to_csv(path, sep="\t", index=False)
    return path


def test_generated_dataset_passes(dataset):
    manifest = _validate(dataset)
    assert set(manifest) == set(SUBJECTS)
    assert TINY["n_sessions"] * TINY["n_runs"] == len(manifest["01"]["runs"])


def test_events_missing_column(dataset):
    path = _edit_events(dataset, lambda ev: ev.drop(columns="duration"))
    with pytest.raises(BrainpipeInputError) as err:
        _validate(dataset)
    assert str(err.value).startswith(f"{path}: field 'duration': column is missing")


def test_events_negative_duration(dataset):
    def negative(ev):
        ev.loc[3, "duration"] = -3.0
        return ev

    path = _edit_events(dataset, negative)
    with pytest.raises(
        BrainpipeInputError, match="field 'duration': row 4: must be >= 0, got -3.0"
    ):
        _validate(dataset)
    with pytest.raises(BrainpipeInputError) as err:
        _validate(dataset)
    assert str(err.value).startswith(f"{path}: ")


def test_bold_shape_disagrees_with_mask(dataset):
    path = BidsLayout(dataset).bold(KEY)
    img = nib.load(path)
    data = np.asarray(img.dataobj)[:-1]
    nib.save(nib.Nifti1Image(data, img.affine, img.header), path)
    with pytest.raises(BrainpipeInputError) as err:
        _validate(dataset)
    assert str(err.value).startswith(f"{path}: field 'shape': volume ")
    assert "differs from the brain mask" in str(err.value)


def test_bold_header_tr_disagrees_with_sidecar(dataset):
    path = BidsLayout(dataset).bold(KEY)
    img = nib.load(path)
    img.header.set_zooms(img.header.get_zooms()[:3] + (2.0,))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header), path)
    with pytest.raises(BrainpipeInputError) as err:
        _validate(dataset)
    assert str(err.value) == (
        f"{path}: field 'pixdim[4] (TR)': TR is 2.0 s but its sidecar "
        f"{BidsLayout(dataset).sidecar(KEY).name} says 1.6 s"
    )


def test_sidecar_tr_disagrees_with_config(dataset):
    sidecar = BidsLayout(dataset).sidecar(KEY)
    meta = json.loads(sidecar.read_text())
    meta["RepetitionTime"] = 1.0
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(BrainpipeInputError) as err:
        _validate(dataset)
    assert str(err.value) == (
        f"{sidecar}: field 'RepetitionTime': TR is 1.0 s but the config key 'tr' says 1.6 s"
    )


def test_missing_run(dataset):
    path = BidsLayout(dataset).bold(KEY)
    path.unlink()
    with pytest.raises(BrainpipeInputError) as err:
        _validate(dataset)
    assert str(err.value).startswith(f"{path}: field '<file>': run missing: sub-02 ses-01 run-02")


def test_run_listed_in_config_but_never_acquired(dataset):
    with pytest.raises(BrainpipeInputError, match="run missing: sub-01 ses-01 run-03"):
        _validate(dataset, runs=["01", "02", "03"])


def test_stimulus_without_image(dataset):
    def unknown(ev):
        ev.loc[0, "stimulus"] = "stim-9999"
        return ev

    path = _edit_events(dataset, unknown)
    with pytest.raises(BrainpipeInputError) as err:
        _validate(dataset)
    assert str(err.value).startswith(
        f"{path}: field 'stimulus': stimulus id 'stim-9999' has no image"
    )


def test_stimulus_image_file_missing(dataset):
    layout = BidsLayout(dataset)
    table = pd.read_csv(layout.stimuli_table, sep="\t")
    image = layout.stimuli_dir / table["image"].iloc[2]
    image.unlink()
    with pytest.raises(BrainpipeInputError) as err:
        _validate(dataset)
    assert str(err.value).startswith(f"{layout.stimuli_table}: field 'image': stimulus ")
    assert str(image) in str(err.value)
