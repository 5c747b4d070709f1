"""Dataset adapters: what each kind of dataset does to fetch its data, ingest its betas and
make its splits.

A registry entry (``config/datasets/NAME.yaml``) names its ``kind``; the kind's adapters,
one per betas mode (``ingest``: the dataset ships betas; ``estimate``: brainpipe's betas
stage makes them), say how. The workflow and :func:`brainpipe.download.fetch_dataset` look
the adapter up (:func:`adapter_for`) and call it; no caller branches on the kind, the space
or the betas mode. A new kind is one :func:`register` call with its functions (the how-to
``docs/howto/add-a-dataset.md``).

The built-in kinds are registered below; their functions import the dataset's module only
when called, so reading the registry (``snakemake -n``) stays fast and offline.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brainpipe.errors import BrainpipeInputError

if TYPE_CHECKING:
    from brainpipe.datasets.registry import DatasetEntry

#: The betas modes: the dataset's own betas, or brainpipe's betas stage.
MODES = ("ingest", "estimate")
#: What a dataset's ROI names and shared-stimulus count are known to be (None: unknown).
Known = tuple[list[str] | None, int | None]


@dataclass(frozen=True)
class FetchRequest:
    """What :attr:`Adapter.fetch` gets: the entry, the merged ``source`` and the selection.

    Attributes
    ----------
    entry : DatasetEntry
        The registry entry.
    source : dict
        The entry's ``source`` block with the workflow config's over it.
    dest : Path
        The folder the dataset's root becomes (written atomically by the adapter).
    subjects, sessions, runs : list of str
        Config keys ``subjects``, ``sessions``, ``runs`` (``runs`` may be the keyword
        ``"all"``: every run of each session).
    task : str or None
        Config key ``task``.
    params : dict
        Generated kinds: the config's generator block (``synthetic``, ``synthetic_meeg``).
    progress : bool
        Show progress bars.
    """

    entry: DatasetEntry
    source: dict[str, Any]
    dest: Path
    subjects: list[str] = field(default_factory=list)
    sessions: list[str] | str = field(default_factory=list)
    runs: list[str] | str = field(default_factory=list)
    task: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    progress: bool = True


@dataclass(frozen=True)
class IngestRequest:
    """What :attr:`Adapter.ingest_betas` and :attr:`Adapter.ingest_splits` get.

    Attributes
    ----------
    entry : DatasetEntry
        The registry entry.
    source : dict
        The merged ``source`` block.
    data : Path
        The fetched data folder.
    subjects, sessions : list of str
        Splits: every subject; betas: the one subject being ingested.
    out : Path
        ``betas.zarr`` or ``splits.tsv``.
    splits_tsv : Path or None
        Betas: the dataset's splits (z-scoring statistics come from training trials only).
    voxel_chunk : int or None
        Betas: voxels per Zarr chunk (config ``betas.voxel_chunk``).
    config : dict
        The workflow config (provenance).
    """

    entry: DatasetEntry
    source: dict[str, Any]
    data: Path
    subjects: list[str]
    sessions: list[str]
    out: Path
    splits_tsv: Path | None = None
    voxel_chunk: int | None = None
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Adapter:
    """How one kind of dataset, in one betas mode, becomes a data folder and betas.

    Attributes
    ----------
    fetch : callable
        ``fetch(FetchRequest) -> Path``: download (or generate) the data folder atomically.
    ingest_betas, ingest_splits : callable or None
        ``(IngestRequest) -> Path``; only for the ``ingest`` mode (the dataset ships betas),
        run by ``rules/ingest.smk`` in place of the betas and splits stages.
    generated : bool
        Made locally from the config (no ``fetch`` rule, the ``download`` checkpoint).
    check_source : callable or None
        ``check_source(source)``: raises on a merged ``source`` block this mode cannot
        serve (NSD time series in a space NSD has none in), naming the key.
    check_config : callable or None
        ``check_config(config, source)``, at DAG build: raises on a workflow config the
        dataset cannot serve (NSD: caption features without ``source.captions``).
    known : callable or None
        ``known(entry, config, data) -> (rois, n_shared)``: the ROI names and the number of
        shared stimuli the dataset will have, as far as they are known before it is
        fetched (``None`` where not), for the config checks at DAG build
        (:func:`brainpipe.validation.check_config_against_dataset`).
    file_inputs : bool
        Rules depend on the dataset's raw files one by one (listed once the ``download``
        checkpoint made them), not on the data folder as one unit.
    """

    fetch: Callable[[FetchRequest], Path]
    ingest_betas: Callable[[IngestRequest], Path] | None = None
    ingest_splits: Callable[[IngestRequest], Path] | None = None
    generated: bool = False
    check_source: Callable[[dict[str, Any]], None] | None = None
    check_config: Callable[[dict[str, Any], dict[str, Any]], None] | None = None
    known: Callable[[DatasetEntry, dict[str, Any], Path], Known] | None = None
    file_inputs: bool = False

    def known_facts(self, entry: DatasetEntry, config: dict[str, Any], data: str | Path) -> Known:
        """``(rois, n_shared)`` of the dataset before it is fetched; ``None`` where unknown."""
        return (None, None) if self.known is None else self.known(entry, config, Path(data))


_ADAPTERS: dict[str, dict[str, Adapter]] = {}


def register(kind: str, mode: str, adapter: Adapter) -> None:
    """Register ``adapter`` as what datasets of ``kind`` do in betas mode ``mode``."""
    if mode not in MODES:
        raise ValueError(f"betas mode must be one of {MODES}, got {mode!r}")
    if mode == "ingest" and (adapter.ingest_betas is None or adapter.ingest_splits is None):
        raise ValueError(f"{kind}: an ingest adapter needs ingest_betas and ingest_splits")
    _ADAPTERS.setdefault(kind, {})[mode] = adapter


def kinds() -> tuple[str, ...]:
    """The registered kinds."""
    return tuple(_ADAPTERS)


def modes(kind: str) -> tuple[str, ...]:
    """The betas modes ``kind`` supports."""
    return tuple(_ADAPTERS.get(kind, {}))


def adapter_for(entry: DatasetEntry, mode: str) -> Adapter:
    """The adapter of ``entry``'s kind in betas mode ``mode``.

    Raises
    ------
    BrainpipeInputError
        The kind has no adapter in that mode (naming ``source.betas`` or the entry's
        ``kind``).
    """
    by_mode = _ADAPTERS.get(entry.kind)
    if not by_mode:
        raise BrainpipeInputError(
            entry.path, "kind", f"no adapter for kind {entry.kind!r} (known: {list(kinds())})"
        )
    if mode not in by_mode:
        what = "ships no betas" if mode == "ingest" else f"has no {mode!r} path"
        raise BrainpipeInputError(
            "config", "source.betas", f"dataset {entry.name!r} ({entry.kind}) {what}"
        )
    return by_mode[mode]


def _call(target: str, *args: Any, **kwargs: Any) -> Any:
    """Call ``module:function``, importing the module only now."""
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)(*args, **kwargs)


def _need_subjects(req: FetchRequest) -> None:
    if not req.subjects:
        raise BrainpipeInputError(
            "config", "subjects", f"{req.entry.name} needs at least one subject"
        )


# --- synthetic (fMRI, BIDS) and synthetic-meeg: generated from a seed --------------------
def _generate(module: str, params_class: str) -> Callable[[FetchRequest], Path]:
    def fetch(req: FetchRequest) -> Path:
        from brainpipe.storage import atomic_path

        mod = importlib.import_module(module)
        params = getattr(mod, params_class).from_config(req.params or {})
        with atomic_path(req.dest) as tmp:
            mod.generate(tmp, params)
        return Path(req.dest)

    return fetch


def _synthetic_known(entry: DatasetEntry, config: dict[str, Any], data: Path) -> Known:
    from brainpipe.dataset_index import n_shared
    from brainpipe.datasets.synthetic import ROI_NAMES, SyntheticParams

    shared = n_shared(data)  # the dataset's own table once it exists
    if shared is None:
        shared = SyntheticParams.from_config(config.get("synthetic") or {}).n_shared
    return list(ROI_NAMES), shared


register(
    "synthetic",
    "estimate",
    Adapter(
        _generate("brainpipe.datasets.synthetic", "SyntheticParams"),
        generated=True,
        known=_synthetic_known,
        file_inputs=True,
    ),
)
register(
    "synthetic-meeg",
    "estimate",
    Adapter(_generate("brainpipe.meeg.synthetic", "MeegSyntheticParams"), generated=True),
)


# --- NSD: its own betas (volume or fsaverage), or its time series as BIDS ----------------
def _nsd_options(entry: DatasetEntry, source: dict[str, Any]) -> Any:
    from brainpipe.datasets.nsd_layout import NsdOptions

    return NsdOptions.from_config({**entry.info, **source})


#: NSD's betas per space: (module, downloader, subject ingest); the volume spaces share one.
NSD_BETAS = {
    "func1pt8mm": ("brainpipe.datasets.nsd", "download_nsd", "ingest_nsd_subject"),
    "func1mm": ("brainpipe.datasets.nsd", "download_nsd", "ingest_nsd_subject"),
    "fsaverage": (
        "brainpipe.datasets.nsd_surface",
        "download_nsd_surface",
        "ingest_nsd_surface_subject",
    ),
}


def _nsd_fetch_betas(req: FetchRequest) -> Path:
    _need_subjects(req)
    opts = _nsd_options(req.entry, req.source)
    module, download, _ = NSD_BETAS[opts.space]
    return _call(
        f"{module}:{download}", req.dest, req.subjects, req.sessions, opts,
        cache=req.source.get("cache_dir"), progress=req.progress,
    )  # fmt: skip


def _nsd_ingest_betas(req: IngestRequest) -> Path:
    opts = _nsd_options(req.entry, req.source)
    module, _, ingest = NSD_BETAS[opts.space]
    (subject,) = req.subjects
    return _call(
        f"{module}:{ingest}", req.data, subject, req.sessions, req.out, opts,
        splits_tsv=req.splits_tsv, voxel_chunk=req.voxel_chunk, config=req.config,
    )  # fmt: skip


def _nsd_ingest_splits(req: IngestRequest) -> Path:
    from brainpipe.datasets.nsd_layout import EXPDESIGN_KEY, make_nsd_splits
    from brainpipe.remote import safe_local_path

    make_nsd_splits(safe_local_path(req.data, EXPDESIGN_KEY), req.subjects, req.sessions, req.out)
    return Path(req.out)


def _nsd_fetch_timeseries(req: FetchRequest) -> Path:
    _need_subjects(req)
    from brainpipe.datasets.nsd_timeseries import download_nsd_timeseries

    return download_nsd_timeseries(
        req.dest, req.subjects, req.sessions, req.runs, _nsd_options(req.entry, req.source),
        task=req.task or str(req.entry.info.get("task", "nsd")),
        cache=req.source.get("cache_dir"), progress=req.progress,
    )  # fmt: skip


def _nsd_check_captions(config: dict[str, Any], source: dict[str, Any]) -> None:
    from brainpipe.datasets.nsd_captions import check_captions_configured

    check_captions_configured(config, source)


def _nsd_known(entry: DatasetEntry, config: dict[str, Any], data: Path) -> Known:
    roi_files = {**entry.info, **entry.merged_source(config)}.get("roi_files")
    if not isinstance(roi_files, dict):  # {file: {ROI name: label values}}
        return None, None
    return sorted({name for names in roi_files.values() for name in (names or {})}), None


#: Spaces in which NSD publishes preprocessed time series.
NSD_TIMESERIES_SPACES = ("func1pt8mm", "func1mm")


def _nsd_check_timeseries(source: dict[str, Any]) -> None:
    space = source.get("space")
    if space is not None and space not in NSD_TIMESERIES_SPACES:
        raise BrainpipeInputError(
            "config",
            "source.space",
            "NSD publishes preprocessed time series only in volume spaces (func1pt8mm, "
            "func1mm); 'estimate' (our betas stage on them) needs one of those, or use "
            "source.betas: ingest for fsaverage betas",
        )


register(
    "nsd",
    "ingest",
    Adapter(
        _nsd_fetch_betas,
        ingest_betas=_nsd_ingest_betas,
        ingest_splits=_nsd_ingest_splits,
        check_config=_nsd_check_captions,
        known=_nsd_known,
    ),
)
register(
    "nsd",
    "estimate",
    Adapter(
        _nsd_fetch_timeseries,
        check_source=_nsd_check_timeseries,
        check_config=_nsd_check_captions,
        known=_nsd_known,
    ),
)


# --- OpenNeuro (BIDS as published) and local/OpenNeuro BIDS + fMRIPrep --------------------
def _s3(source: dict[str, Any]) -> Any:
    from brainpipe.datasets.openneuro import OPENNEURO_BUCKET
    from brainpipe.remote import S3Source

    return S3Source.from_config({"bucket": OPENNEURO_BUCKET, **source})


def _openneuro_fetch(req: FetchRequest) -> Path:
    _need_subjects(req)
    from brainpipe.datasets.openneuro import download_openneuro
    from brainpipe.remote import WORKERS

    if "accession" not in req.source:
        raise BrainpipeInputError(req.entry.path, "source.accession", "is missing")
    return download_openneuro(
        req.dest,
        req.source["accession"],
        req.subjects,
        source=_s3(req.source),
        sessions=req.source.get("sessions") or req.sessions,
        derivatives=bool(req.source.get("derivatives", False)),
        cache=req.source.get("cache_dir"),
        workers=int(req.source.get("workers") or WORKERS),
        progress=req.progress,
    )


def _bids_fetch(req: FetchRequest) -> Path:
    """A BIDS + fMRIPrep dataset: local (``source.path``) or an OpenNeuro accession.

    An accession's raw files and its ``derivatives/fmriprep`` (selected subjects, sessions
    and space only) are fetched into ``{data_dir}/.{dataset}-bids`` first; either way the
    data folder is then built by :func:`brainpipe.datasets.fmriprep.build_view`.
    """
    _need_subjects(req)
    from brainpipe.datasets import fmriprep, openneuro
    from brainpipe.remote import WORKERS

    merged, entry, dest = req.source, req.entry, Path(req.dest)
    opts = fmriprep.FmriprepOptions.from_config({**entry.info, **merged}, entry.path)
    if merged.get("stimuli_dir"):
        opts = replace(opts, adapter=replace(opts.adapter, stimuli_dir=str(merged["stimuli_dir"])))
    if not req.runs:
        raise BrainpipeInputError("config", "runs", f"{entry.name} needs at least one run")
    task = req.task or str(entry.info.get("task", ""))
    if merged.get("path"):  # a local folder wins over the registry's accession
        root = Path(merged["path"])
    elif merged.get("accession"):
        root = openneuro.download_openneuro(
            dest.with_name(f".{dest.name}-bids"),
            merged["accession"],
            req.subjects,
            source=_s3(merged),
            sessions=merged.get("sessions") or req.sessions,
            derivatives=True,
            cache=merged.get("cache_dir"),
            workers=int(merged.get("workers") or WORKERS),
            progress=req.progress,
            keep_derivative=fmriprep.derivative_filter(opts),
        )
    else:
        raise BrainpipeInputError(
            entry.path, "source.path", "a bids dataset needs source.path (a local BIDS folder) "
            "or source.accession (OpenNeuro)",
        )  # fmt: skip
    prep = fmriprep.fmriprep_folder(root, merged.get("fmriprep"))
    return fmriprep.build_view(dest, root, prep, req.subjects, req.sessions, req.runs, task, opts)


def _bids_known(entry: DatasetEntry, config: dict[str, Any], data: Path) -> Known:
    """The entry's (or config's) ``rois`` block; a surface view adds its whole-cortex ROI."""
    merged = {**entry.info, **entry.merged_source(config)}
    if not isinstance(merged.get("rois"), dict):
        return None, None
    from brainpipe.surface import is_surface_space

    rois = sorted(merged["rois"])
    if is_surface_space(merged.get("space")):
        from brainpipe.datasets.fmriprep import CORTEX_ROI

        rois.append(CORTEX_ROI)
    return rois, None


register("openneuro", "estimate", Adapter(_openneuro_fetch))
register("bids", "estimate", Adapter(_bids_fetch, known=_bids_known))


# --- OSF (THINGS-EEG2) --------------------------------------------------------------------
def _osf_fetch(req: FetchRequest) -> Path:
    _need_subjects(req)
    from brainpipe.meeg.things_eeg2 import download_things_eeg2

    return download_things_eeg2(
        req.dest, req.source, req.subjects, req.sessions or None,
        cache=req.source.get("cache_dir"), progress=req.progress,
    )  # fmt: skip


register("osf", "estimate", Adapter(_osf_fetch))
