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

from brainpipe.datasets import adapters
from brainpipe.errors import BrainpipeInputError

#: Where the registry entries of a source checkout live. The workflow passes its own
#: ``config/datasets`` (``registry_dir``), so this default only serves the package used
#: from a checkout without Snakemake (tests, benchmarks).
REGISTRY_DIR = Path(__file__).resolve().parents[3] / "config" / "datasets"
#: Modalities: fMRI datasets go through preprocess/betas; M/EEG ones through rules/meeg.smk.
MODALITIES = ("fmri", "meeg")
#: M/EEG file formats (an entry's ``format``; the readers: ``brainpipe.meeg.jobs.FORMATS``).
MEEG_FORMATS = ("things-eeg2", "bids-meg")


@dataclass(frozen=True)
class DatasetEntry:
    """One registry entry.

    Attributes
    ----------
    name : str
        Registry name (the config's ``dataset``).
    kind : str
        A kind with adapters (:mod:`brainpipe.datasets.adapters`).
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
        return self.adapter(self.betas).generated

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
        if mode not in adapters.MODES:
            raise BrainpipeInputError(
                "config", "source.betas", f"expected one of {list(adapters.MODES)}, got {mode!r}"
            )
        adapter = self.adapter(mode)  # raises when the kind has no such mode
        if adapter.check_source is not None:
            adapter.check_source(self.merged_source(config))
        return mode

    def adapter(self, mode: str) -> adapters.Adapter:
        """This kind's adapter (fetch, ingest, splits) in betas mode ``mode``."""
        return adapters.adapter_for(self, mode)

    def adapter_for_config(self, config: dict[str, Any] | None) -> adapters.Adapter:
        """The adapter the workflow ``config`` selects, after the kind's checks of it.

        Raises
        ------
        BrainpipeInputError
            A betas mode or ``source`` the kind cannot serve, or (``check_config``) a
            config the dataset cannot serve, naming the key.
        """
        adapter = self.adapter(self.betas_mode(config))
        if adapter.check_config is not None:
            adapter.check_config(config or {}, self.merged_source(config))
        return adapter


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
    if kind not in adapters.kinds():
        raise BrainpipeInputError(
            path, "kind", f"expected one of {list(adapters.kinds())}, got {kind!r}"
        )
    betas = raw.pop("betas", "estimate")
    if betas not in adapters.modes(kind):
        raise BrainpipeInputError(
            path, "betas", f"kind {kind!r} supports {list(adapters.modes(kind))}, got {betas!r}"
        )
    modality = raw.get("modality", "fmri")
    if modality not in MODALITIES:
        raise BrainpipeInputError(
            path, "modality", f"expected one of {list(MODALITIES)}, got {modality!r}"
        )
    if modality == "meeg" and raw.get("format") not in MEEG_FORMATS:
        raise BrainpipeInputError(
            path,
            "format",
            f"an M/EEG entry needs format {' or '.join(MEEG_FORMATS)}, got {raw.get('format')!r}",
        )
    source = raw.pop("source", {}) or {}
    if not isinstance(source, dict):
        raise BrainpipeInputError(path, "source", "expected a mapping")
    return DatasetEntry(name=name, kind=kind, betas=betas, source=source, info=raw, path=path)
