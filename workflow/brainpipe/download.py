"""Get a dataset into the data folder: download it, or for ``synthetic`` generate it.

Which dataset and how is looked up in the registry (``config/datasets/NAME.yaml``,
see :mod:`brainpipe.datasets.registry`). The dataset lands under a temporary
name and is renamed into place once it is complete, so an interrupted download
never looks finished; remote objects are first fetched into a persistent
cache next to it (``{data_dir}/.{dataset}-objects``), so a failed or killed
download resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from brainpipe.datasets.registry import available_datasets, load_entry
from brainpipe.errors import BrainpipeInputError
from brainpipe.storage import atomic_path

#: Datasets brainpipe can fetch (the registry's entries).
KNOWN_DATASETS = tuple(available_datasets())


def fetch_dataset(
    name: str,
    dest: str | Path,
    params: dict[str, Any] | None = None,
    *,
    subjects: list[str] | None = None,
    sessions: list[str] | None = None,
    source: dict[str, Any] | None = None,
    runs: list[str] | None = None,
    task: str | None = None,
    progress: bool = True,
    registry_dir: str | Path | None = None,
) -> Path:
    """Fetch (or generate) dataset ``name`` into ``dest``.

    Parameters
    ----------
    name : str
        Registry name (config key ``dataset``).
    dest : path
        Folder the dataset's root becomes.
    params : dict, optional
        For ``synthetic``: the config's ``synthetic`` block.
    subjects, sessions : list of str, optional
        What to fetch (config keys ``subjects``, ``sessions``).
    source : dict, optional
        The config's ``source`` block, merged over the registry's.
    runs, task : list of str, str, optional
        Config keys ``runs`` and ``task``: the runs NSD's time-series path
        (``source.betas: estimate``) fetches and the BIDS task label it writes.
    progress : bool
        Show progress bars.
    registry_dir : path, optional
        The workflow's ``config/datasets`` folder (the workflow passes its own, so an
        entry added to the checkout is found wherever the package is installed).
    """
    entry = load_entry(name, registry_dir)
    merged = entry.merged_source({"source": source or {}})
    if entry.kind == "synthetic":
        from brainpipe.datasets import synthetic

        with atomic_path(dest) as tmp:
            synthetic.generate(tmp, synthetic.SyntheticParams.from_config(params or {}))
        return Path(dest)
    if entry.kind == "synthetic-meeg":
        from brainpipe.meeg import synthetic as meeg_synthetic

        with atomic_path(dest) as tmp:
            meeg_synthetic.generate(tmp, meeg_synthetic.MeegSyntheticParams.from_config(params))
        return Path(dest)
    if not subjects:
        raise BrainpipeInputError("config", "subjects", f"{name} needs at least one subject")
    cache = merged.get("cache_dir")
    if entry.kind == "nsd":
        from brainpipe.datasets import nsd

        opts = nsd.NsdOptions.from_config({**entry.info, **merged})
        if entry.betas_mode({"source": source or {}}) == "estimate":
            from brainpipe.datasets import nsd_timeseries

            return nsd_timeseries.download_nsd_timeseries(
                dest, subjects, sessions or [], runs or [], opts,
                task=task or str(entry.info.get("task", "nsd")), cache=cache, progress=progress,
            )  # fmt: skip
        if opts.space == "fsaverage":
            from brainpipe.datasets import nsd_surface

            return nsd_surface.download_nsd_surface(
                dest, subjects, sessions or [], opts, cache=cache, progress=progress
            )
        return nsd.download_nsd(
            dest, subjects, sessions or [], opts, cache=cache, progress=progress
        )
    if entry.kind == "openneuro":
        from brainpipe.datasets import openneuro
        from brainpipe.remote import S3Source

        if "accession" not in merged:
            raise BrainpipeInputError(entry.path, "source.accession", "is missing")
        s3 = S3Source.from_config({"bucket": openneuro.OPENNEURO_BUCKET, **merged})
        return openneuro.download_openneuro(
            dest,
            merged["accession"],
            subjects,
            source=s3,
            sessions=merged.get("sessions") or sessions,
            derivatives=bool(merged.get("derivatives", False)),
            cache=cache,
            workers=int(merged.get("workers", 4)),
            progress=progress,
        )
    if entry.kind == "osf":
        from brainpipe.meeg.things_eeg2 import download_things_eeg2

        return download_things_eeg2(
            dest, merged, subjects, sessions, cache=cache, progress=progress
        )
    if entry.kind == "bids":
        return _fetch_bids(entry, merged, Path(dest), subjects, sessions, runs, task, progress)
    raise BrainpipeInputError(entry.path, "kind", f"no downloader for kind {entry.kind!r}")


def _fetch_bids(
    entry: Any,
    merged: dict[str, Any],
    dest: Path,
    subjects: list[str],
    sessions: list[str] | None,
    runs: list[str] | None,
    task: str | None,
    progress: bool,
) -> Path:
    """A BIDS + fMRIPrep dataset: local (``source.path``) or an OpenNeuro accession.

    An accession's raw files and its ``derivatives/fmriprep`` (selected subjects, sessions
    and space only) are fetched into ``{data_dir}/.{dataset}-bids`` first; either way the
    data folder is then built by :func:`brainpipe.datasets.fmriprep.build_view`.
    """
    from brainpipe.datasets import fmriprep, openneuro

    opts = fmriprep.FmriprepOptions.from_config({**entry.info, **merged}, entry.path)
    if merged.get("stimuli_dir"):
        from dataclasses import replace

        opts = replace(opts, adapter=replace(opts.adapter, stimuli_dir=str(merged["stimuli_dir"])))
    if not runs:
        raise BrainpipeInputError("config", "runs", f"{entry.name} needs at least one run")
    task = task or str(entry.info.get("task", ""))
    if merged.get("path"):  # a local folder wins over the registry's accession
        root = Path(merged["path"])
    elif merged.get("accession"):
        from brainpipe.remote import S3Source

        s3 = S3Source.from_config({"bucket": openneuro.OPENNEURO_BUCKET, **merged})
        root = openneuro.download_openneuro(
            dest.with_name(f".{dest.name}-bids"),
            merged["accession"],
            subjects,
            source=s3,
            sessions=merged.get("sessions") or sessions,
            derivatives=True,
            cache=merged.get("cache_dir"),
            workers=int(merged.get("workers", 4)),
            progress=progress,
            keep_derivative=fmriprep.derivative_filter(opts),
        )
    else:
        raise BrainpipeInputError(
            entry.path, "source.path", "a bids dataset needs source.path (a local BIDS folder) "
            "or source.accession (OpenNeuro)",
        )  # fmt: skip
    prep = fmriprep.fmriprep_folder(root, merged.get("fmriprep"))
    return fmriprep.build_view(dest, root, prep, subjects, sessions or [], runs, task, opts)
