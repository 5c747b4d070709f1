"""The HRF library of GLMsingle type B, read from a documented input table.

The table (default ``config/hrf_library.tsv``) has one row per HRF and the
columns ``hrf_index, peak_delay, undershoot_delay, dispersion,
undershoot_ratio``: the parameters of :func:`brainpipe.hrf.double_gamma_hrf`
(seconds for ``dispersion=1``). The default table is
:func:`brainpipe.hrf.hrf_library_parameters` with 20 entries — time to peak from
about 4.5 to 8 s with varied undershoots — the same family the synthetic
dataset draws its voxel HRFs from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from brainpipe.errors import BrainpipeInputError
from brainpipe.hrf import double_gamma_hrf, hrf_library_parameters

#: Columns of the HRF library table, in order.
COLUMNS = ("hrf_index", "peak_delay", "undershoot_delay", "dispersion", "undershoot_ratio")
#: The table shipped with brainpipe.
DEFAULT_TABLE = Path(__file__).resolve().parents[3] / "config" / "hrf_library.tsv"


def read_hrf_library(path: str | Path | None = None) -> pd.DataFrame:
    """Read and validate an HRF library table.

    Parameters
    ----------
    path : path or None
        Tab-separated table; ``None`` gives the built-in parameters
        (:func:`brainpipe.hrf.hrf_library_parameters` with 20 HRFs).

    Returns
    -------
    pandas.DataFrame
        One row per HRF, ordered by ``hrf_index`` (0, 1, ..., n - 1).

    Raises
    ------
    BrainpipeInputError
        Naming the file and the column when a column is missing, a value is not
        a positive finite number, or ``hrf_index`` is not 0..n-1.
    """
    if path is None:
        return pd.DataFrame(
            [{"hrf_index": i, **p} for i, p in enumerate(hrf_library_parameters(20))]
        )
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise BrainpipeInputError(str(path), "table", f"cannot be read as TSV ({err})") from err
    for col in COLUMNS:
        if col not in table.columns:
            raise BrainpipeInputError(str(path), col, "column missing")
        values = pd.to_numeric(table[col], errors="coerce").to_numpy(float)
        if not np.all(np.isfinite(values)):
            raise BrainpipeInputError(str(path), col, "expected finite numbers in every row")
        if col not in ("hrf_index",) and np.any(values < 0):
            raise BrainpipeInputError(str(path), col, "expected numbers >= 0")
    if len(table) == 0:
        raise BrainpipeInputError(str(path), "hrf_index", "the table has no rows")
    if sorted(table["hrf_index"].astype(int)) != list(range(len(table))):
        raise BrainpipeInputError(str(path), "hrf_index", f"expected 0..{len(table) - 1}")
    if np.any(table["peak_delay"] <= 0) or np.any(table["dispersion"] <= 0):
        raise BrainpipeInputError(str(path), "peak_delay", "peak_delay and dispersion must be > 0")
    return table.sort_values("hrf_index").reset_index(drop=True)[list(COLUMNS)]


def library_kernels(table: pd.DataFrame, dt: float) -> np.ndarray:
    """HRF kernels of a library table, sampled every ``dt`` s and peak-normalised.

    Returns
    -------
    numpy.ndarray, shape (n_hrfs, n_samples), float64
    """
    return np.stack(
        [
            double_gamma_hrf(
                dt,
                peak_delay=float(r.peak_delay),
                undershoot_delay=float(r.undershoot_delay),
                dispersion=float(r.dispersion),
                undershoot_ratio=float(r.undershoot_ratio),
            )
            for r in table.itertuples()
        ]
    )


def time_to_peak(kernels: np.ndarray, dt: float) -> np.ndarray:
    """Time to peak of each kernel in seconds, shape (n_hrfs,)."""
    return np.argmax(kernels, axis=1) * dt
