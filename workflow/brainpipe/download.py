"""Get a dataset into the data folder: download it, or for ``synthetic`` generate it.

Which dataset is looked up in the registry (``config/datasets/NAME.yaml``, see
:mod:`brainpipe.datasets.registry`), and how in its kind's adapter
(:mod:`brainpipe.datasets.adapters`). The dataset lands under a temporary
name and is renamed into place once it is complete, so an interrupted download
never looks finished; remote objects are first fetched into a persistent
cache next to it (``{data_dir}/.{dataset}-objects``), so a failed or killed
download resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from brainpipe.datasets.adapters import FetchRequest
from brainpipe.datasets.registry import available_datasets, load_entry

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
    config = {"source": source or {}}
    request = FetchRequest(
        entry=entry,
        source=entry.merged_source(config),
        dest=Path(dest),
        subjects=list(subjects or []),
        sessions=sessions or [],  # a list, or a keyword such as "all", as configured
        runs=runs or [],
        task=task,
        params=dict(params or {}),
        progress=progress,
    )
    return entry.adapter(entry.betas_mode(config)).fetch(request)
