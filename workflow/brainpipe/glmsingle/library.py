"""The HRF library of GLMsingle type B, read from a documented input table.

Two table formats (tab-separated) are accepted:

- **sampled** (the default ``config/hrf_library.tsv``): a ``time`` column in
  seconds from stimulus onset (0, then a uniform step) and one column per HRF
  (``hrf_00``, ``hrf_01``, ...), each the response to a brief event; any
  scale (kernels are peak-normalised). The shipped table holds the 20 HRFs of
  GLMsingle's ``getcanonicalhrflibrary.tsv`` (cvnlab/GLMsingle, BSD-3-Clause,
  licence in ``config/hrf_library.LICENSE``), derived from the Natural Scenes
  Dataset (Prince et al., eLife 2022): impulse responses peaking 2.7 to
  5.7 s after onset. On both benchmark simulators (``benchmarks/betas_vs_glmsingle.py``)
  it gives more accurate type-B betas than a double-gamma family spanning the
  simulated HRFs, because the max-R² choice over a library overfits less with
  these compact, well separated kernels.
- **parametric**: columns ``hrf_index, peak_delay, undershoot_delay,
  dispersion, undershoot_ratio``, one row per HRF, the parameters of
  :func:`brainpipe.hrf.double_gamma_hrf` (seconds for ``dispersion=1``), e.g.
  :func:`brainpipe.hrf.hrf_library_parameters`, the family the synthetic
  dataset draws its voxel HRFs from (written to its
  ``derivatives/groundtruth/hrf_library.tsv``).

The *assumed* HRF of type A (the ON-OFF model whose R² picks the noise pool,
and the type-A betas) is read the same way (:func:`assumed_kernel`): by
default GLMsingle's own assumed HRF (``config/hrf_assumed.tsv``, see there).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.interpolate import PchipInterpolator

from brainpipe.errors import BrainpipeInputError
from brainpipe.hrf import canonical_hrf, double_gamma_hrf, hrf_library_parameters

#: Columns of a parametric HRF library table, in order.
COLUMNS = ("hrf_index", "peak_delay", "undershoot_delay", "dispersion", "undershoot_ratio")
#: The table shipped with brainpipe (sampled format).
DEFAULT_TABLE = Path(__file__).resolve().parents[3] / "config" / "hrf_library.tsv"
#: GLMsingle's assumed HRF of type A (sampled format, one column), shipped with brainpipe.
ASSUMED_TABLE = DEFAULT_TABLE.with_name("hrf_assumed.tsv")
#: Names of the built-in assumed HRFs (``betas.assumed_hrf``).
ASSUMED_NAMES = ("glmsingle", "spm")


def is_sampled(table: pd.DataFrame) -> bool:
    """Whether ``table`` is a sampled library (a ``time`` column, one column per HRF)."""
    return "time" in table.columns


def n_hrfs(table: pd.DataFrame) -> int:
    """Number of HRFs in a library table of either format."""
    return table.shape[1] - 1 if is_sampled(table) else len(table)


def read_hrf_library(path: str | Path | None = None) -> pd.DataFrame:
    """Read and validate an HRF library table (sampled or parametric, see the module).

    Parameters
    ----------
    path : path or None
        Tab-separated table; ``None`` gives the shipped table
        (``config/hrf_library.tsv``), or the parametric
        :func:`brainpipe.hrf.hrf_library_parameters` if it is missing.

    Returns
    -------
    pandas.DataFrame
        Sampled: ``time`` then one column per HRF. Parametric: one row per HRF,
        ordered by ``hrf_index`` (0, 1, ..., n - 1).

    Raises
    ------
    BrainpipeInputError
        Naming the file and the column when a column is missing, a value is not
        a finite number (or a negative parameter), ``time`` is not 0 then a
        uniform step, or ``hrf_index`` is not 0..n-1.
    """
    if path is None:
        if DEFAULT_TABLE.exists():
            return read_hrf_library(DEFAULT_TABLE)
        return pd.DataFrame(
            [{"hrf_index": i, **p} for i, p in enumerate(hrf_library_parameters(20))]
        )
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise BrainpipeInputError(str(path), "table", f"cannot be read as TSV ({err})") from err
    if len(table) == 0:
        raise BrainpipeInputError(str(path), "table", "the table has no rows")
    if is_sampled(table):
        return _check_sampled(table, path)
    for col in COLUMNS:
        if col not in table.columns:
            raise BrainpipeInputError(
                str(path), col, "column missing (or give a sampled table with a 'time' column)"
            )
        values = pd.to_numeric(table[col], errors="coerce").to_numpy(float)
        if not np.all(np.isfinite(values)):
            raise BrainpipeInputError(str(path), col, "expected finite numbers in every row")
        if col not in ("hrf_index",) and np.any(values < 0):
            raise BrainpipeInputError(str(path), col, "expected numbers >= 0")
    if sorted(table["hrf_index"].astype(int)) != list(range(len(table))):
        raise BrainpipeInputError(str(path), "hrf_index", f"expected 0..{len(table) - 1}")
    if np.any(table["peak_delay"] <= 0) or np.any(table["dispersion"] <= 0):
        raise BrainpipeInputError(str(path), "peak_delay", "peak_delay and dispersion must be > 0")
    return table.sort_values("hrf_index").reset_index(drop=True)[list(COLUMNS)]


def _check_sampled(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    if table.shape[1] < 2:
        raise BrainpipeInputError(str(path), "time", "expected at least one HRF column")
    for col in table.columns:
        values = pd.to_numeric(table[col], errors="coerce").to_numpy(float)
        if not np.all(np.isfinite(values)):
            raise BrainpipeInputError(str(path), str(col), "expected finite numbers in every row")
        if col != "time" and not np.any(values > 0):
            raise BrainpipeInputError(str(path), str(col), "the HRF never rises above 0")
    t = table["time"].to_numpy(float)
    step = np.diff(t)
    if len(t) < 2 or t[0] != 0 or np.any(step <= 0) or np.ptp(step) > 1e-6 * step.max():
        raise BrainpipeInputError(
            str(path), "time", "expected 0 then a uniform, increasing step in seconds"
        )
    return table.astype(float).reset_index(drop=True)


def library_kernels(table: pd.DataFrame, dt: float) -> np.ndarray:
    """HRF kernels of a library table, sampled every ``dt`` s and peak-normalised.

    Returns
    -------
    numpy.ndarray, shape (n_hrfs, n_samples), float64
        Sampled tables are resampled with a shape-preserving (PCHIP) interpolant.
    """
    if is_sampled(table):
        t = table["time"].to_numpy(float)
        grid = np.arange(0.0, t[-1] + dt / 2, dt)
        out = np.stack(
            [PchipInterpolator(t, table[c].to_numpy(float))(grid) for c in table.columns[1:]]
        )
        return out / out.max(axis=1, keepdims=True)
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


def read_assumed_hrf(spec: str | Path | pd.DataFrame | None) -> str | pd.DataFrame:
    """Validate the assumed HRF of type A: a built-in name or a one-HRF sampled table.

    Parameters
    ----------
    spec : ``"glmsingle"`` (or None), ``"spm"``, a path to a sampled table with
        one HRF column, or such a table already read.

    Returns
    -------
    ``"glmsingle"``, ``"spm"`` or the table (``time`` and one HRF column).
    """
    if spec is None:
        return "glmsingle"
    if isinstance(spec, str) and spec in ASSUMED_NAMES:
        return spec
    if isinstance(spec, pd.DataFrame):
        table, where = spec, "betas.assumed_hrf"
    else:
        table, where = read_hrf_library(spec), str(spec)
    if not is_sampled(table) or table.shape[1] != 2:
        raise BrainpipeInputError(
            where,
            "betas.assumed_hrf",
            f"expected {' or '.join(map(repr, ASSUMED_NAMES))}, or a sampled table with a "
            f"'time' column and exactly one HRF column (got columns {list(table.columns)})",
        )
    return table


def assumed_kernel(spec: str | pd.DataFrame, dt: float) -> np.ndarray:
    """Kernel of the assumed HRF of type A, sampled every ``dt`` s and peak-normalised.

    ``"glmsingle"``: GLMsingle's assumed HRF (its ``getcanonicalhrf`` before the
    stimulus duration is applied), read from ``config/hrf_assumed.tsv``; it is
    the HRF of the ON-OFF model whose R² splits the noise pool from the voxels
    that score the cross-validation, so using GLMsingle's keeps the two
    selections GLMsingle's. ``"spm"``: SPM's double gamma
    (:func:`brainpipe.hrf.canonical_hrf`). A table: its one HRF.
    """
    spec = read_assumed_hrf(spec)
    if isinstance(spec, str) and spec == "spm":
        return canonical_hrf(dt)
    if isinstance(spec, str):
        if not ASSUMED_TABLE.exists():  # pragma: no cover - the table ships with brainpipe
            raise BrainpipeInputError(str(ASSUMED_TABLE), "table", "file not found")
        spec = read_hrf_library(ASSUMED_TABLE)
    return library_kernels(spec, dt)[0]
