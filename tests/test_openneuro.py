"""OpenNeuro accessions from a loopback `openneuro.org` bucket, and local BIDS folders.

Registry `kind: openneuro` (raw BIDS fetched as is) is exercised through the `things-meg`
entry; BIDS + fMRIPrep datasets (`kind: bids`: bold5000, things-fmri) are in test_fmriprep.
"""

from __future__ import annotations

import json

import pytest

from brainpipe.bids import BidsLayout, RunKey, read_events, read_stimuli
from brainpipe.datasets import openneuro
from brainpipe.download import fetch_dataset
from brainpipe.errors import BrainpipeInputError
from brainpipe.remote import UnsafeKeyError, read_manifest

from .s3_server import admin_client, make_public_bucket, moto_server, upload, upload_tree

ACCESSION = "ds004212"  # things-meg's accession


@pytest.fixture(scope="module")
def bucket(tiny_dataset):
    """moto serving `openneuro.org` with the tiny synthetic BIDS dataset as ds004212."""
    with moto_server() as endpoint:
        client = admin_client(endpoint)
        make_public_bucket(client, openneuro.OPENNEURO_BUCKET)
        keys = upload_tree(client, openneuro.OPENNEURO_BUCKET, tiny_dataset, prefix=f"{ACCESSION}/")
        # an object whose key tries to climb out of the data folder
        upload(client, openneuro.OPENNEURO_BUCKET, f"{ACCESSION}/sub-03/../../../evil.txt", b"x")
        yield endpoint, keys


def test_malicious_key_in_listing_is_refused(bucket, tmp_path):
    endpoint, keys = bucket
    # The server lists the key as stored; it must be refused before anything is written.
    dest = tmp_path / "data" / "things-meg"
    with pytest.raises(UnsafeKeyError, match=r"sub-03/\.\./\.\./\.\./evil.txt"):
        fetch_dataset(
            "things-meg", dest, subjects=["03"],
            source={"endpoint_url": endpoint}, progress=False,
        )  # fmt: skip
    assert not list(tmp_path.rglob("evil.txt")) and not dest.exists()


def test_fetch_subject_events_and_stimuli(bucket, tiny_dataset, tmp_path):
    endpoint, keys = bucket
    dest = tmp_path / "data" / "things-meg"
    fetch_dataset(
        "things-meg", dest, subjects=["02"], sessions=None,
        source={"endpoint_url": endpoint, "sessions": ["01"]}, progress=False,
    )  # fmt: skip
    assert (dest / "dataset_description.json").exists()
    assert (dest / "sub-02").is_dir() and not (dest / "sub-01").exists()
    assert not list(dest.glob("sub-02/ses-02"))  # only the selected session
    assert not (dest / "derivatives").exists()  # derivatives: false
    layout = BidsLayout(dest, task="images")
    events = read_events(layout.events(RunKey("02", "01", "01")))
    assert len(events) > 0
    stimuli = read_stimuli(layout.stimuli_table)
    assert (dest / "stimuli" / stimuli["image"].iloc[0]).exists()
    manifest = read_manifest(dest.with_name(".things-meg-objects"))
    assert f"{ACCESSION}/sub-02/ses-01/func/sub-02_ses-01_task-images_run-01_events.tsv" in manifest
    src = tiny_dataset / "sub-02/ses-01/func/sub-02_ses-01_task-images_run-01_bold.nii.gz"
    got = dest / "sub-02/ses-01/func/sub-02_ses-01_task-images_run-01_bold.nii.gz"
    assert got.read_bytes() == src.read_bytes()


def test_unknown_subject_and_accession_are_named(bucket, tmp_path):
    endpoint, _ = bucket
    with pytest.raises(BrainpipeInputError, match=r"ds004212/.*field 'subjects'.*sub-99"):
        fetch_dataset(
            "things-meg", tmp_path / "d", subjects=["99"], source={"endpoint_url": endpoint}
        )
    with pytest.raises(BrainpipeInputError, match=r"field 'accession'"):
        fetch_dataset(
            "things-meg", tmp_path / "d", subjects=["01"],
            source={"endpoint_url": endpoint, "accession": "ds000001"},
        )  # fmt: skip


def test_select_keys_filters_subjects_sessions_and_derivatives():
    from brainpipe.remote import ObjectInfo

    keys = [
        "ds1/dataset_description.json", "ds1/stimuli/a.png", "ds1/sub-01/ses-01/func/x.nii.gz",
        "ds1/sub-01/ses-02/func/x.nii.gz", "ds1/sub-02/func/x.nii.gz",
        "ds1/derivatives/fmriprep/sub-01/x.nii.gz", "ds1/derivatives/fmriprep/sub-02/x.nii.gz",
    ]  # fmt: skip
    objs = [ObjectInfo(k, 1, "") for k in keys]
    got = [o.key for o in openneuro.select_keys(objs, "ds1", ["01"], ["01"], derivatives=True)]
    assert got == [keys[0], keys[1], keys[2], keys[5]]


def test_local_bids_and_fmriprep_are_linked_not_copied(tiny_dataset, tmp_path):
    prep = tmp_path / "fmriprep"
    prep.mkdir()
    (prep / "dataset_description.json").write_text(
        json.dumps(
            {"Name": "x", "DatasetType": "derivative", "GeneratedBy": [{"Name": "fMRIPrep"}]}
        )
    )
    dest = openneuro.link_local_bids(tmp_path / "data" / "mine", tiny_dataset, ["01"], prep)
    assert (dest / "sub-01").is_symlink() and not (dest / "sub-02").exists()
    assert (dest / "derivatives" / "fmriprep").resolve() == prep.resolve()
    assert (dest / "stimuli" / "stimuli.tsv").exists()
    bad = tmp_path / "notprep"
    bad.mkdir()
    (bad / "dataset_description.json").write_text(json.dumps({"Name": "x"}))
    with pytest.raises(BrainpipeInputError, match="GeneratedBy"):
        openneuro.link_local_bids(tmp_path / "data" / "other", tiny_dataset, ["01"], bad)
    with pytest.raises(BrainpipeInputError, match="sub-07"):
        openneuro.check_bids_root(tiny_dataset, ["07"])
