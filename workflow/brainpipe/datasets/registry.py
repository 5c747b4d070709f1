"""The dataset registry: one ``config/datasets/NAME.yaml`` per dataset.

An entry says what kind of dataset it is (``synthetic``, ``nsd``,
``openneuro``, ``bids``), where it lives (its ``source`` block: bucket,
accession, local path, …), which subjects and sessions it has, and whether its
betas are ingested from the dataset (``betas: ingest``, NSD's default) or
estimated by brainpipe's own betas stage (``betas: estimate``; for NSD: from its
preprocessed time series, :mod:`brainpipe.datasets.nsd_timeseries`). Reading the
registry never touches the network, so ``snakemake -n`` stays offline.

The workflow config's ``source`` block overrides the registry's, key by key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from brainpipe.errors import BrainpipeInputError

#: Where the registry entries of a source checkout live. The workflow passes its own
#: ``config/datasets`` (``registry_dir``), so this default only serves the package used
#: from a checkout without Snakemake (tests, benchmarks).
REGISTRY_DIR = Path(__file__).resolve().parents[3] / "config" / "datasets"
#: Kinds of dataset the downloader understands.
KINDS = ("synthetic", "synthetic-meeg", "nsd", "openneuro", "bids", "osf")
#: Kinds generated locally (no fetch).
GENERATED_KINDS = ("synthetic", "synthetic-meeg")
#: Modalities: fMRI datasets go through preprocess/betas; M/EEG ones through rules/meeg.smk.
MODALITIES = ("fmri", "meeg")


@dataclass(frozen=True)
class DatasetEntry:
    """One registry entry.

    Attributes
    ----------
    name : str
        Registry name (the config's ``dataset``).
    kind : str
        One of :data:`KINDS`.
    betas : str
        ``"ingest"`` (betas come with the dataset) or ``"estimate"``.
    source : dict
        Where and how to fetch (kind-specific keys).
    info : dict
        Everything else in the file (subjects, sessions, tr, description, ...).
    path : Path
        The YAML file.
    """

    name: str
    kind: str
    betas: str
    source: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    path: Path = REGISTRY_DIR

    @property
    def generated(self) -> bool:
        """Whether the dataset is generated locally instead of fetched."""
        return self.kind in GENERATED_KINDS

    @property
    def modality(self) -> str:
        """``fmri`` (default) or ``meeg`` (the entry's ``modality`` key)."""
        return str(self.info.get("modality", "fmri"))

    def merged_source(self, config: dict[str, Any] | None) -> dict[str, Any]:
        """The registry's ``source`` block with the workflow config's ``source`` over it."""
        merged = dict(self.source)
        merged.update({k: v for k, v in ((config or {}).get("source") or {}).items()})
        return merged

    def betas_mode(self, config: dict[str, Any] | None) -> str:
        """``ingest`` or ``estimate``: the config's ``source.betas`` wins over the registry."""
        mode = ((config or {}).get("source") or {}).get("betas", self.betas)
        if mode not in ("ingest", "estimate"):
            raise BrainpipeInputError(
                "config", "source.betas", f"expected 'ingest' or 'estimate', got {mode!r}"
            )
        space = self.merged_source(config).get("space")
        if mode == "estimate" and self.kind == "nsd" and space == "fsaverage":
            raise BrainpipeInputError(
                "config",
                "source.space",
                "NSD publishes preprocessed time series only in volume spaces (func1pt8mm, "
                "func1mm); 'estimate' (our betas stage on them) needs one of those, or use "
                "source.betas: ingest for fsaverage betas",
            )
        if mode == "ingest" and self.kind != "nsd":
            raise BrainpipeInputError(
                "config", "source.betas", f"dataset {self.name!r} ({self.kind}) ships no betas"
            )
        return mode


def available_datasets(registry_dir: str | Path | None = None) -> list[str]:
    """Names of all registry entries, sorted."""
    return sorted(p.stem for p in Path(registry_dir or REGISTRY_DIR).glob("*.yaml"))


def load_entry(name: str, registry_dir: str | Path | None = None) -> DatasetEntry:
    """Read ``registry_dir/NAME.yaml``.

    ``registry_dir`` is the workflow's ``config/datasets`` folder (the Snakefile passes
    it); ``None`` means :data:`REGISTRY_DIR`, the checkout the package was imported from.

    Raises
    ------
    BrainpipeInputError
        Unknown dataset, unreadable YAML, or a bad ``kind`` / ``betas`` value.
    """
    registry_dir = Path(registry_dir or REGISTRY_DIR)
    path = Path(registry_dir, f"{name}.yaml")
    if not path.exists():
        raise BrainpipeInputError(
            "config",
            "dataset",
            f"no registry entry {path} for {name!r} (known: {available_datasets(registry_dir)})",
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise BrainpipeInputError(path, "<file>", f"not valid YAML ({err})") from err
    kind = raw.pop("kind", None)
    if kind not in KINDS:
        raise BrainpipeInputError(path, "kind", f"expected one of {list(KINDS)}, got {kind!r}")
    betas = raw.pop("betas", "estimate")
    if betas not in ("ingest", "estimate"):
        raise BrainpipeInputError(path, "betas", f"expected ingest or estimate, got {betas!r}")
    modality = raw.get("modality", "fmri")
    if modality not in MODALITIES:
        raise BrainpipeInputError(
            path, "modality", f"expected one of {list(MODALITIES)}, got {modality!r}"
        )
    if modality == "meeg" and raw.get("format") not in ("things-eeg2", "bids-meg"):
        raise BrainpipeInputError(
            path,
            "format",
            f"an M/EEG entry needs format things-eeg2 or bids-meg, got {raw.get('format')!r}",
        )
    source = raw.pop("source", {}) or {}
    if not isinstance(source, dict):
        raise BrainpipeInputError(path, "source", "expected a mapping")
    return DatasetEntry(name=name, kind=kind, betas=betas, source=source, info=raw, path=path)
