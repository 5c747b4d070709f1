"""Get a dataset into the data folder: download it, or for ``synthetic`` generate it.

The dataset lands under a temporary name and is renamed into place once it is
complete, so an interrupted download never looks finished.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from brainpipe.errors import BrainpipeInputError
from brainpipe.storage import atomic_path

#: Datasets brainpipe can fetch today.
KNOWN_DATASETS = ("synthetic",)


def fetch_dataset(name: str, dest: str | Path, params: dict[str, Any] | None = None) -> Path:
    """Fetch (or generate) dataset ``name`` into ``dest``.

    Parameters
    ----------
    name : str
        Registry name (config key ``dataset``).
    dest : path
        Folder the dataset's root becomes.
    params : dict, optional
        Dataset-specific parameters (for ``synthetic``: the config's
        ``synthetic`` block).
    """
    if name not in KNOWN_DATASETS:
        raise BrainpipeInputError(
            "config", "dataset", f"no downloader for {name!r} (known: {list(KNOWN_DATASETS)})"
        )
    from brainpipe.datasets import synthetic

    with atomic_path(dest) as tmp:
        synthetic.generate(tmp, synthetic.SyntheticParams.from_config(params or {}))
    return Path(dest)
