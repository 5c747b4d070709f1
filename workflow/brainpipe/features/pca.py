"""PCA fitted on training stimuli only, and the Zarr feature store builder.

Leakage rule (see docs/architecture.md, "Splits and leakage"): the PCA mean and components, and
anything a feature model fits, see the training stimuli only. Changing test stimuli
changes their scores but never the fitted transform.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from brainpipe.errors import BrainpipeInputError
from brainpipe.features import check_columns, get_feature_model, required_columns
from brainpipe.storage import provenance_attrs, write_zarr

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
STIMULUS_CHUNK = 1000


@dataclass(frozen=True)
class PCAParams:
    """A fitted PCA.

    Attributes
    ----------
    mean : ndarray of float64, shape (n_raw_features,)
        Mean of the training features.
    components : ndarray of float64, shape (n_components, n_raw_features)
        Orthonormal principal axes (rows), by decreasing explained variance. Signs are
        fixed so that each row's largest-magnitude loading is positive (deterministic).
    explained_variance_ratio : ndarray of float64, shape (n_components,)
        Fraction of the training variance each component explains.
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance_ratio: np.ndarray

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])


def fit_pca(X_train: np.ndarray, n_components: int) -> PCAParams:
    """Fit PCA on training features by a thin SVD of the centred data.

    Parameters
    ----------
    X_train : ndarray, shape (n_train, n_raw_features)
        Raw features of the training stimuli only.
    n_components : int
        Requested number of components; capped at ``min(n_train - 1, n_raw_features)``.

    Returns
    -------
    params : PCAParams
    """
    X = np.asarray(X_train, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X_train must be 2-D (n_train, n_raw_features), got shape {X.shape}")
    n, p = X.shape
    if n < 2:
        raise ValueError(f"PCA needs at least 2 training stimuli, got {n}")
    if not np.all(np.isfinite(X)):
        raise ValueError("X_train contains NaN or infinite values")
    if n_components < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    k = int(min(n_components, n - 1, p))
    mean = X.mean(axis=0)
    Xc = X - mean
    _, s, vt = np.linalg.svd(Xc, full_matrices=False)
    components = vt[:k]
    # deterministic signs: largest |loading| of each component positive
    idx = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(k), idx])
    signs[signs == 0] = 1.0
    components = components * signs[:, None]
    total = float(np.sum(s**2))
    evr = (s[:k] ** 2) / total if total > 0 else np.zeros(k)
    return PCAParams(
        mean=mean,
        components=np.ascontiguousarray(components),
        explained_variance_ratio=evr,
    )


def transform(params: PCAParams, X: np.ndarray) -> np.ndarray:
    """Project features onto fitted components.

    Parameters
    ----------
    params : PCAParams
    X : ndarray, shape (n_stimuli, n_raw_features)

    Returns
    -------
    scores : ndarray of float32, shape (n_stimuli, n_components)
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != params.mean.shape[0]:
        raise ValueError(f"X must have shape (n_stimuli, {params.mean.shape[0]}), got {X.shape}")
    return ((X - params.mean) @ params.components.T).astype(np.float32)


def read_stimuli_and_splits(
    stimuli_tsv: Path, splits_tsv: Path, columns: tuple[str, ...] = ()
) -> pd.DataFrame:
    """Read the stimuli table and attach each stimulus's split.

    Parameters
    ----------
    stimuli_tsv : Path
        Tab-separated table with a ``stimulus`` column (unique) plus ``columns``.
    splits_tsv : Path
        Tab-separated table with columns ``stimulus`` and ``split`` ("train" or "test").
    columns : tuple of str
        Further columns of ``stimuli_tsv`` that must be present.

    Returns
    -------
    stimuli : DataFrame
        The stimuli table in file order with a ``split`` column added; stimuli that have
        no row in the splits table get split ``"unassigned"`` (never fitted on).
        ``stimuli.attrs["source"]`` holds the path for error messages.

    Raises
    ------
    BrainpipeInputError
        Missing file or column, duplicate stimulus, unknown split value, or a stimulus in
        the splits table without a row in the stimuli table.
    """
    stimuli_tsv, splits_tsv = Path(stimuli_tsv), Path(splits_tsv)
    for path in (stimuli_tsv, splits_tsv):
        if not path.is_file():
            raise BrainpipeInputError(str(path), "(file)", "file does not exist")
    stim = pd.read_csv(stimuli_tsv, sep="\t", dtype={"stimulus": str}, keep_default_na=False)
    check_columns(stim, ["stimulus", *columns], stimuli_tsv)
    dup = stim["stimulus"][stim["stimulus"].duplicated()]
    if len(dup):
        raise BrainpipeInputError(
            str(stimuli_tsv), "stimulus", f"duplicate stimulus ids, e.g. {dup.iloc[0]!r}"
        )
    splits = pd.read_csv(splits_tsv, sep="\t", dtype=str, keep_default_na=False)
    check_columns(splits, ["stimulus", "split"], splits_tsv)
    dup = splits["stimulus"][splits["stimulus"].duplicated()]
    if len(dup):
        raise BrainpipeInputError(
            str(splits_tsv), "stimulus", f"stimulus {dup.iloc[0]!r} appears more than once"
        )
    bad = splits.loc[~splits["split"].isin(SPLITS), "split"]
    if len(bad):
        raise BrainpipeInputError(
            str(splits_tsv), "split", f"got {bad.iloc[0]!r}, expected one of {list(SPLITS)}"
        )
    unknown = splits.loc[~splits["stimulus"].isin(stim["stimulus"]), "stimulus"]
    if len(unknown):
        raise BrainpipeInputError(
            str(splits_tsv),
            "stimulus",
            f"{len(unknown)} stimulus id(s) have no row in {stimuli_tsv}, e.g. {unknown.iloc[0]!r}",
        )
    split_of = dict(zip(splits["stimulus"], splits["split"], strict=True))
    stim = stim.copy()
    stim["split"] = [split_of.get(s, "unassigned") for s in stim["stimulus"]]
    n_unassigned = int((stim["split"] == "unassigned").sum())
    if n_unassigned:
        log.warning(
            "%d stimuli in %s have no split in %s; marked 'unassigned'",
            n_unassigned,
            stimuli_tsv,
            splits_tsv,
        )
    stim.attrs["source"] = str(stimuli_tsv)
    return stim


def build_feature_store(
    feature_model: str,
    stimuli_tsv: Path,
    splits_tsv: Path,
    out_path: Path,
    n_components: int,
    config: dict[str, Any] | None = None,
) -> Path:
    """Extract features, fit PCA on the training stimuli, write the Zarr feature store.

    Parameters
    ----------
    feature_model : str
        Name in :data:`brainpipe.features.FEATURE_MODELS`.
    stimuli_tsv : Path
        ``stimuli/stimuli.tsv``; image paths are relative to its folder.
    splits_tsv : Path
        ``splits.tsv`` (stimulus → "train" / "test").
    out_path : Path
        Zarr store to write (atomically).
    n_components : int
        Requested PCA components (capped at ``n_train - 1`` and the raw feature count).
    config : dict, optional
        Config whose hash goes into the provenance attributes.

    Returns
    -------
    out_path : Path
        The store, with ``features(stimulus, feature)`` float32 (PCA scores of all
        stimuli), ``pca_mean(raw_feature)``, ``pca_components(feature, raw_feature)``,
        ``explained_variance_ratio(feature)``, coords ``stimulus``, ``split(stimulus)``,
        ``feature``, ``raw_feature`` and attrs ``feature_model``, ``n_components``,
        ``n_components_requested``, ``fitted_on="train"``, ``n_fit_stimuli``, plus
        provenance.
    """
    model = get_feature_model(feature_model)
    stimuli_tsv = Path(stimuli_tsv)
    stim = read_stimuli_and_splits(stimuli_tsv, splits_tsv, required_columns(feature_model))
    train_mask = (stim["split"] == "train").to_numpy()
    n_train = int(train_mask.sum())
    if n_train < 2:
        raise BrainpipeInputError(
            str(splits_tsv), "split", f"need at least 2 'train' stimuli to fit PCA, got {n_train}"
        )
    raw = np.asarray(model(stim, stimuli_tsv.parent, train_mask), dtype=np.float32)
    if raw.ndim != 2 or raw.shape[0] != len(stim):
        raise ValueError(
            f"feature model {feature_model!r} returned shape {raw.shape}, "
            f"expected ({len(stim)}, n_raw_features)"
        )
    params = fit_pca(raw[train_mask], n_components)
    scores = transform(params, raw)
    k, p = params.components.shape
    ds = xr.Dataset(
        {
            "features": (("stimulus", "feature"), scores),
            "pca_mean": (("raw_feature",), params.mean),
            "pca_components": (("feature", "raw_feature"), params.components),
            "explained_variance_ratio": (("feature",), params.explained_variance_ratio),
        },
        coords={
            "stimulus": stim["stimulus"].to_numpy(dtype=object),
            "split": ("stimulus", stim["split"].to_numpy(dtype=object)),
            "feature": np.arange(k, dtype=np.int64),
            "raw_feature": np.arange(p, dtype=np.int64),
        },
        attrs={
            "feature_model": feature_model,
            "n_components": int(k),
            "n_components_requested": int(n_components),
            "fitted_on": "train",
            "n_fit_stimuli": n_train,
            **provenance_attrs(config),
        },
    )
    ds["features"].encoding["chunks"] = (min(STIMULUS_CHUNK, len(stim)), k)
    ds["pca_components"].encoding["chunks"] = (k, p)
    return write_zarr(ds, out_path)


# --------------------------------------------------------------------------- out of core

RowBlocks = Callable[[], Iterator[tuple[int, np.ndarray]]]
"""``blocks() -> iterator of (first_row, rows)``: the raw layer, a block of rows at a time."""


def _sign_fix(components: np.ndarray) -> np.ndarray:
    idx = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(components.shape[0]), idx])
    signs[signs == 0] = 1.0
    return components * signs[:, None]


def fit_pca_out_of_core(
    blocks: RowBlocks,
    train_mask: np.ndarray,
    n_features: int,
    n_components: int,
    *,
    device: str = "cpu",
    exact_max_features: int = 4096,
    oversample: int = 10,
    n_iter: int = 2,
    seed: int = 0,
) -> PCAParams:
    """PCA of the training rows of a layer too big for memory, reading it block by block.

    Only rows with ``train_mask`` true are ever used, so changing test stimuli changes no
    fitted parameter. Up to ``exact_max_features`` features the covariance is accumulated
    exactly (float64) and diagonalised; above, a randomized range finder (Halko, Martinsson
    & Tropp 2011, algorithm 4.4 with ``n_iter`` power iterations) needs only
    ``(n_features, n_components + oversample)`` float64 in memory and ``3 + 2 n_iter``
    passes over the data. With no more than ``n_components + oversample`` training rows the
    range finder spans all of them and is exact, so it is used whatever the feature count.
    Matrix products run in torch on ``device`` (a GPU when present).

    Parameters
    ----------
    blocks : callable
        Returns a fresh iterator of ``(first_row, rows)``; ``rows`` is ``(b, n_features)``.
    train_mask : ndarray of bool, shape (n_stimuli,)
    n_features : int
    n_components : int
        Capped at ``min(n_train - 1, n_features)``.

    Returns
    -------
    PCAParams
        ``mean`` and ``components`` (float64), ``explained_variance_ratio`` of the training
        variance.
    """
    import torch

    from brainpipe.compute import limit_allocator_growth

    limit_allocator_growth()  # blocks freed go back to the OS, not to a growing heap
    train_mask = np.asarray(train_mask, dtype=bool)
    n_train = int(train_mask.sum())
    if n_train < 2:
        raise ValueError(f"PCA needs at least 2 training stimuli, got {n_train}")
    k = int(min(n_components, n_train - 1, n_features))
    dev = torch.device(device)
    f64 = torch.float64

    def train_blocks(center: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        # Each block is converted once to a float32 tensor and centred in place: a block
        # costs its float32 size, never a float64 copy (the job's mem_mb sizes blocks so).
        for first, rows in blocks():
            sel = train_mask[first : first + len(rows)]
            if sel.any():
                picked = rows if sel.all() else rows[sel]
                x = torch.as_tensor(np.array(picked, dtype=np.float32), device=dev)
                if not torch.isfinite(x).all():
                    raise ValueError("the layer contains NaN or infinite values")
                if center is not None:
                    x -= center
                del picked, rows  # the next block is read while this one is in use
                yield x
                del x

    total = torch.zeros(n_features, dtype=f64, device=dev)
    sq = torch.zeros(n_features, dtype=f64, device=dev)
    for x in train_blocks():
        for sub in torch.split(x, 32):  # float64 moments, 32 rows at a time
            d = sub.double()
            total += d.sum(0)
            sq += (d * d).sum(0)
        del x, sub, d
    mean = total / n_train
    total_var = float((sq - n_train * mean**2).clamp_min(0).sum())
    mean32 = mean.float()

    # With few training rows the range finder spans their whole row space (ell = n_train):
    # exact too, and far cheaper than diagonalising an (n_features, n_features) covariance.
    if n_features <= exact_max_features and k + oversample < n_train:
        cov = torch.zeros((n_features, n_features), dtype=f64, device=dev)
        for xc in train_blocks(mean32):
            xd = xc.double()
            del xc
            cov += xd.T @ xd
            del xd
        evals, evecs = torch.linalg.eigh(cov)
        order = torch.argsort(evals, descending=True)[:k]
        components = evecs[:, order].T
        variances = evals[order].clamp_min(0)
    else:
        ell = min(k + oversample, n_train, n_features)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        omega = torch.randn(n_features, ell, generator=gen, dtype=torch.float32).to(dev)

        def project(mat: torch.Tensor) -> torch.Tensor:  # Xc @ mat, (n_train, ell)
            return torch.cat([xc @ mat for xc in train_blocks(mean32)]).double()

        def back(q: torch.Tensor) -> torch.Tensor:  # Xc.T @ q, (n_features, ell)
            acc = torch.zeros((n_features, q.shape[1]), dtype=f64, device=dev)
            start = 0
            for xc in train_blocks(mean32):
                qb = q[start : start + len(xc)].float()
                acc += (xc.T @ qb).double()
                start += len(xc)
                del xc
            return acc

        # (n_features, ell) float64 matrices are the working memory besides the block: free
        # each as soon as it is used (118 MB apiece at 200,000 features).
        y = project(omega)
        del omega
        for _ in range(n_iter):
            q, _ = torch.linalg.qr(y)
            b = back(q)
            z, _ = torch.linalg.qr(b)
            del b
            y = project(z.float())
            del z
        q, _ = torch.linalg.qr(y)
        bt = back(q)  # (Xc.T Q) = B.T, (n_features, ell)
        _, s, vt = torch.linalg.svd(bt.T, full_matrices=False)
        del bt
        components = vt[:k]
        variances = s[:k] ** 2
    comps = _sign_fix(components.cpu().numpy().astype(np.float64))
    evr = variances.cpu().numpy() / total_var if total_var > 0 else np.zeros(k)
    return PCAParams(
        mean=mean.cpu().numpy(),
        components=np.ascontiguousarray(comps),
        explained_variance_ratio=np.asarray(evr, dtype=np.float64),
    )


def transform_blocks(params: PCAParams, blocks: RowBlocks, n_rows: int, device: str = "cpu"):
    """Scores ``(n_rows, n_components)`` float32 of every row, a block at a time."""
    import torch

    dev = torch.device(device)
    mean = torch.as_tensor(params.mean, dtype=torch.float32, device=dev)
    comps = torch.as_tensor(params.components.T, dtype=torch.float32, device=dev)
    out = np.empty((n_rows, params.n_components), dtype=np.float32)
    for first, rows in blocks():
        x = torch.as_tensor(np.array(rows, dtype=np.float32), device=dev)
        x -= mean
        out[first : first + len(rows)] = (x @ comps).cpu().numpy()
    return out
