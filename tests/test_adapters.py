"""Dataset adapters: a kind registers its fetch (and, when it ships betas, ingest and
splits); fetch_dataset and the workflow's ingest scripts dispatch through it."""

from __future__ import annotations

from pathlib import Path

import pytest

from brainpipe.datasets import adapters
from brainpipe.datasets.adapters import Adapter, FetchRequest, IngestRequest
from brainpipe.datasets.registry import load_entry
from brainpipe.download import fetch_dataset
from brainpipe.errors import BrainpipeInputError


@pytest.fixture
def toy_kind(monkeypatch, tmp_path):
    """A kind ``toy`` registered for this test only, and a registry entry of that kind."""
    monkeypatch.setattr(adapters, "_ADAPTERS", {k: dict(v) for k, v in adapters._ADAPTERS.items()})
    seen: dict[str, object] = {}

    def fetch(req: FetchRequest) -> Path:
        seen["fetch"] = req
        req.dest.mkdir(parents=True)
        (req.dest / "subjects.txt").write_text("\n".join(req.subjects))
        return req.dest

    def ingest(req: IngestRequest) -> Path:
        seen["ingest"] = req
        Path(req.out).write_text(",".join(req.subjects))
        return Path(req.out)

    adapters.register("toy", "ingest", Adapter(fetch, ingest_betas=ingest, ingest_splits=ingest))
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "toydata.yaml").write_text("kind: toy\nbetas: ingest\nsource: {level: 1}\n")
    return registry, seen


def test_a_registered_kind_is_fetched_and_ingested_through_its_adapter(toy_kind, tmp_path):
    registry, seen = toy_kind
    dest = fetch_dataset(
        "toydata", tmp_path / "data", subjects=["01", "02"], source={"level": 2},
        registry_dir=registry,
    )  # fmt: skip
    assert (dest / "subjects.txt").read_text() == "01\n02"
    assert seen["fetch"].source == {"level": 2}  # the config's source over the entry's
    entry = load_entry("toydata", registry)
    adapter = entry.adapter_for_config({"source": {}})
    out = adapter.ingest_splits(
        IngestRequest(entry, {}, dest, ["01", "02"], ["01"], tmp_path / "splits.tsv")
    )
    assert out.read_text() == "01,02"
    assert not adapter.generated and adapter.known_facts(entry, {}, dest) == (None, None)


def test_modes_a_kind_lacks_are_refused_naming_the_key(toy_kind, tmp_path):
    registry, _ = toy_kind
    with pytest.raises(BrainpipeInputError, match=r"source.betas.*toydata.*no 'estimate'"):
        load_entry("toydata", registry).betas_mode({"source": {"betas": "estimate"}})
    (registry / "bad.yaml").write_text("kind: bids\nbetas: ingest\n")
    with pytest.raises(BrainpipeInputError, match=r"bad.yaml: field 'betas'.*supports"):
        load_entry("bad", registry)
    (registry / "unknown.yaml").write_text("kind: nothing\n")
    with pytest.raises(BrainpipeInputError, match=r"field 'kind'.*'toy'"):
        load_entry("unknown", registry)
    with pytest.raises(ValueError, match="needs ingest_betas"):
        adapters.register("half", "ingest", Adapter(lambda req: req.dest))


def test_nsd_dispatches_on_space_and_mode_by_table():
    nsd = load_entry("nsd")
    assert nsd.adapter("ingest").ingest_betas is not None
    assert nsd.adapter("estimate").ingest_betas is None
    assert set(adapters.NSD_BETAS) == {"func1pt8mm", "func1mm", "fsaverage"}
    with pytest.raises(BrainpipeInputError, match=r"source.space.*volume spaces"):
        nsd.betas_mode({"source": {"betas": "estimate", "space": "fsaverage"}})
    rois, _ = nsd.adapter("ingest").known_facts(nsd, {}, "unused")
    assert "nsdgeneral" in rois
