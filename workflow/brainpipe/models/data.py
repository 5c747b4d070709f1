"""The arrays one training job sees: train trials and test stimuli of one subject × ROI.

Training rows are single trials whose stimulus is in the train split; the test split is
only ever read as responses averaged over repeats (and only by prediction / evaluation),
so nothing fitted sees a test stimulus.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from brainpipe.errors import BrainpipeInputError
from brainpipe.splits import read_splits, trial_split
from brainpipe.storage import open_zarr

#: ROI name meaning "the union of every ROI mask in the betas store".
UNION_ROI = "all"


def roi_betas(betas_path: str | Path, roi: str) -> xr.Dataset:
    """The betas store restricted to the voxels of ``roi`` (lazy).

    ``roi="all"`` selects the union of every ``roi_<NAME>`` mask of the store.
    """
    store = open_zarr(betas_path)
    masks = sorted(c for c in store.coords if c.startswith("roi_"))
    if roi == UNION_ROI:
        if not masks:
            raise BrainpipeInputError(betas_path, "roi_*", "the store has no ROI masks")
        keep = np.logical_or.reduce([store[c].values.astype(bool) for c in masks])
    else:
        name = f"roi_{roi}"
        if name not in store.coords:
            known = [c[4:] for c in masks]
            raise BrainpipeInputError(
                betas_path, name, f"ROI {roi!r} not in the store (has {known} and {UNION_ROI!r})"
            )
        keep = store[name].values.astype(bool)
    selected = store.isel(voxel=np.flatnonzero(keep))
    if selected.sizes["voxel"] == 0:
        raise BrainpipeInputError(betas_path, f"roi_{roi}", f"ROI {roi!r} has no voxels")
    return selected


def roi_size(betas_path: str | Path, roi: str) -> tuple[int, int]:
    """``(n_trials, n_voxels)`` of ``roi`` in a betas store, read from its coordinates.

    Raises
    ------
    FileNotFoundError
        The store is not written yet (``filename`` is ``betas_path`` as given: Snakemake
        then evaluates a resource that needs it once the store exists).
    """
    if not Path(betas_path).exists():
        raise FileNotFoundError(errno.ENOENT, "betas store not written yet", betas_path)
    betas = roi_betas(betas_path, roi)
    return int(betas.sizes["trial"]), int(betas.sizes["voxel"])


def features_for(
    features: xr.Dataset,
    stimuli: np.ndarray,
    source: str,
    dtype: type | None = np.float32,
    var: str = "features",
) -> np.ndarray:
    """Rows of ``features[var]`` for ``stimuli`` (any trailing dims kept), as ``dtype``.

    ``dtype=None`` keeps the store's dtype. A stimulus the store does not hold raises
    :class:`BrainpipeInputError` naming ``source``.
    """
    known = pd.Index(features["stimulus"].values.astype(str))
    idx = known.get_indexer(np.asarray(stimuli).astype(str))
    if (idx < 0).any():
        raise BrainpipeInputError(
            source, "stimulus", f"stimulus {np.asarray(stimuli)[idx < 0][0]!r} has no {var}"
        )
    return np.asarray(features[var].values[idx], dtype=dtype)


#: Most MB of image rows an :class:`ImageFeatures` holds in memory; above it, each read
#: goes to the store (a DINOv2 map of an NSD subject's 9,000 training images is 7.1 GB).
FEATURE_CACHE_MB = 1024


class ImageFeatures:
    """Per-trial rows of a feature store that holds one row per stimulus, read per image.

    Row ``t`` is the store's row ``rows[t]`` (the trial's stimulus): an NSD subject's
    27,000 training trials of 9,000 images index 9,000 rows, never a (trials x ...) copy.
    When the distinct rows fit in ``cache_mb`` they are read once and held (one copy per
    image); otherwise every read (:meth:`take`: a minibatch) gathers its distinct rows from
    the store (chunked by stimulus rows), so memory is one batch whatever the store's size.
    Either way a read returns the same values the per-trial array would hold.

    Parameters
    ----------
    path : path
        The feature store (``features(stimulus, ...)``).
    rows : ndarray of int, shape (n,)
        Each trial's row in the store.
    var : str
        The variable read.
    cache_mb : float
        Hold the distinct rows in memory when they take at most this many MB.
    """

    def __init__(
        self,
        path: str | Path,
        rows: np.ndarray,
        var: str = "features",
        cache_mb: float = FEATURE_CACHE_MB,
    ) -> None:
        import zarr

        self.path, self.var, self.cache_mb = Path(path), var, float(cache_mb)
        self.rows = np.asarray(rows, dtype=np.int64)
        self._array = zarr.open_group(str(self.path), mode="r")[var]
        self._cache: np.ndarray | None = None
        self._slot: np.ndarray | None = None
        self._n_distinct = len(np.unique(self.rows))

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self._array.shape[1:])

    @property
    def ndim(self) -> int:
        return len(self._array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    @property
    def row_bytes(self) -> int:
        """Bytes of one row as float32."""
        return int(np.prod(self._array.shape[1:], dtype=np.int64)) * 4

    @property
    def distinct_mb(self) -> float:
        """MB of the distinct rows (images) as float32: what holding them takes."""
        return self._n_distinct * self.row_bytes / 1e6

    @property
    def cached(self) -> bool:
        """Whether the distinct rows are held in memory (read on first use)."""
        return self.distinct_mb <= self.cache_mb

    def __len__(self) -> int:
        return len(self.rows)

    def _read(self, store_rows: np.ndarray) -> np.ndarray:
        """The store's rows ``store_rows`` (sorted, distinct) as float32."""
        return np.asarray(self._array.oindex[store_rows], dtype=np.float32)

    def take(self, idx: np.ndarray | slice) -> np.ndarray:
        """Rows ``idx`` of the per-trial view, ``(len(idx), ...)`` float32."""
        rows = self.rows[idx]
        if self.cached:
            if self._cache is None:
                distinct, self._slot = np.unique(self.rows, return_inverse=True)
                self._cache = self._read(distinct)
            return self._cache[self._slot[idx]]
        distinct, inverse = np.unique(rows, return_inverse=True)
        return self._read(distinct)[inverse]

    def __getitem__(self, idx: np.ndarray | slice) -> np.ndarray:
        return self.take(idx)

    def subset(self, keep: np.ndarray) -> ImageFeatures:
        """The view restricted to trials ``keep`` (a mask or indices), still lazy."""
        return ImageFeatures(self.path, self.rows[keep], self.var, self.cache_mb)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self.take(slice(None))
        return out if dtype is None else out.astype(dtype)


def minibatches(
    features: np.ndarray | ImageFeatures, batches: list[np.ndarray]
) -> Iterator[np.ndarray]:
    """``features[idx]`` for each ``idx`` of ``batches``, in order, each as float32.

    A streamed :class:`ImageFeatures` reads the next batch from the store in a thread while
    the caller works on this one (at most two batches in memory); the rows are the same.
    """
    from concurrent.futures import ThreadPoolExecutor

    def read(idx: np.ndarray) -> np.ndarray:
        return np.asarray(features[idx], dtype=np.float32)

    if not isinstance(features, ImageFeatures) or features.cached:
        for idx in batches:
            yield read(idx)
        return
    with ThreadPoolExecutor(1) as pool:
        ahead = pool.submit(read, batches[0]) if batches else None
        for i in range(len(batches)):
            current = ahead.result()
            if i + 1 < len(batches):
                ahead = pool.submit(read, batches[i + 1])
            yield current


def trial_features(
    path: str | Path, store: xr.Dataset, stimuli: np.ndarray, var: str = "features"
) -> np.ndarray | ImageFeatures:
    """The rows of ``store[var]`` for ``stimuli`` (trials), as a job reads them.

    A 2-D store (PCA features: a few hundred floats per stimulus) is read into a per-trial
    array (:func:`features_for`); a spatial store (``(stimulus, token, channel)``: a DINOv2
    map is 257 x 768 floats per image) stays in the store as :class:`ImageFeatures`, read
    per image. A stimulus the store does not hold raises :class:`BrainpipeInputError`
    naming ``path``.
    """
    if store[var].ndim <= 2:
        return features_for(store, stimuli, str(path), var=var)
    known = pd.Index(store["stimulus"].values.astype(str))
    idx = known.get_indexer(np.asarray(stimuli).astype(str))
    if (idx < 0).any():
        raise BrainpipeInputError(
            str(path), "stimulus", f"stimulus {np.asarray(stimuli)[idx < 0][0]!r} has no {var}"
        )
    return ImageFeatures(path, idx, var)


def betas_values(betas: xr.Dataset) -> np.ndarray:
    """``betas`` as float32, NaN where the dataset marks a voxel invalid in a session.

    A store may carry ``valid(ses, voxel)`` (NSD's ``valid_sessionNN``: the session's
    betas of an invalid voxel are 0, not a response); those entries become NaN here, like
    the NaN vertices NSD's fsaverage betas hold already.
    """
    values = np.array(betas["betas"].values, dtype=np.float32)
    if "valid" in betas.data_vars and "ses" in betas.coords:
        ses = pd.Index(betas["ses"].values.astype(str))
        rows = ses.get_indexer(betas["session"].values.astype(str))
        if (rows < 0).any():
            raise BrainpipeInputError(
                "betas.zarr", "valid", "a trial's session has no row in valid(ses, voxel)"
            )
        values[~np.asarray(betas["valid"].values, bool)[rows]] = np.nan
    return values


#: Trials read per block when a job streams its betas (bounds the read buffer).
TRIAL_BLOCK = 750


def _invalid_rows(betas: xr.Dataset) -> tuple[np.ndarray, np.ndarray] | None:
    """``valid(ses, voxel)`` as a bool array and each trial's row in it; None without one."""
    if "valid" not in betas.data_vars or "ses" not in betas.coords:
        return None
    ses = pd.Index(betas["ses"].values.astype(str))
    rows = ses.get_indexer(betas["session"].values.astype(str))
    if (rows < 0).any():
        raise BrainpipeInputError(
            "betas.zarr", "valid", "a trial's session has no row in valid(ses, voxel)"
        )
    return np.asarray(betas["valid"].values, bool), rows


def split_betas(
    betas: xr.Dataset,
    test_stimuli: np.ndarray,
    train: np.ndarray | None = None,
    trial_block: int = TRIAL_BLOCK,
    means: TrainingMeans | None = None,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Training trials and test responses averaged over repeats, in one pass over the store.

    The betas are read ``trial_block`` trials at a time (a session of NSD); each block's
    training rows go straight into the training array and its test rows are summed per
    stimulus. Memory: the training array, the ``(n_test, n_voxels)`` sums and one block —
    never all trials at once, never a second copy of them. Entries a store marks invalid
    (``valid(ses, voxel)``, see :func:`betas_values`) become NaN; missing values are left
    out of each voxel's test average (NaN where a stimulus has no finite repeat).

    Parameters
    ----------
    betas : xarray.Dataset
        ``betas(trial, voxel)`` with a ``stimulus(trial)`` coord (lazy, e.g. :func:`roi_betas`).
    test_stimuli : ndarray of str, shape (n_test,)
        Stimuli whose trials are averaged.
    train : ndarray of bool, shape (n_trials,), optional
        Training trials to return; ``None``: none (evaluation).
    trial_block : int
        Trials per read.
    means : TrainingMeans, optional
        Also accumulates, in the same pass, each voxel's mean over the finite values of
        ``means.trials`` (the fill values of :func:`fill_missing` when ``train`` is a
        subset of those trials: :meth:`LazyBetas.read_trials`).

    Returns
    -------
    betas_train : ndarray of float32, shape (n_train, n_voxels), or None
    means : ndarray of float32, shape (n_test, n_voxels)
    counts : ndarray of int, shape (n_test,)
    """
    import scipy.sparse as sp

    trial_stimuli = betas["stimulus"].values.astype(str)
    n_trials, n_vox = len(trial_stimuli), int(betas.sizes["voxel"])
    codes = pd.Index(np.asarray(test_stimuli).astype(str)).get_indexer(trial_stimuli)
    counts = np.bincount(codes[codes >= 0], minlength=len(test_stimuli))
    sums = np.zeros((len(test_stimuli), n_vox), dtype=np.float64)
    finite_n = np.zeros((len(test_stimuli), n_vox), dtype=np.float32)  # repeat counts: exact
    out = None if train is None else np.empty((int(train.sum()), n_vox), dtype=np.float32)
    invalid = _invalid_rows(betas)
    step = max(1, int(trial_block))
    row = 0
    data = betas["betas"]
    for t0 in range(0, n_trials, step):
        t1 = min(t0 + step, n_trials)
        block = np.array(data[t0:t1].values, dtype=np.float32)
        if invalid is not None:
            valid, rows = invalid
            block[~valid[rows[t0:t1]]] = np.nan
        if out is not None:
            keep = train[t0:t1]
            out[row : row + int(keep.sum())] = block[keep]
            row += int(keep.sum())
        if means is not None:
            means.add(block[means.trials[t0:t1]])
        c = codes[t0:t1]
        hit = np.flatnonzero(c >= 0)
        if len(hit):
            onehot = sp.csr_matrix(
                (np.ones(len(hit)), (c[hit], hit)), shape=(len(test_stimuli), t1 - t0)
            )
            finite = np.isfinite(block)
            sums += onehot @ np.where(finite, block, 0).astype(np.float64)
            finite_n += onehot @ finite.astype(np.float32)
        del block
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(finite_n > 0, sums / np.maximum(finite_n, 1), np.nan)
    return out, means.astype(np.float32), counts


def average_test_responses(
    betas: xr.Dataset, test_stimuli: np.ndarray, values: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Responses to each test stimulus averaged over its repeats, and the repeat counts.

    Missing values (NaN: invalid voxels, NaN vertices) are left out of each voxel's
    average; a stimulus with no finite repeat at a voxel averages to NaN there.
    Streams the store (:func:`split_betas`) unless ``values`` are given.

    Returns
    -------
    means : ndarray of float32, shape (n_test, n_voxels)
    counts : ndarray of int, shape (n_test,)
    """
    if values is None:
        _, means, counts = split_betas(betas, test_stimuli)
        return means, counts
    trial_stimuli = betas["stimulus"].values.astype(str)
    codes = pd.Index(test_stimuli).get_indexer(trial_stimuli)
    sel = codes >= 0
    counts = np.bincount(codes[sel], minlength=len(test_stimuli))
    finite = np.isfinite(values[sel])
    sums = np.zeros((len(test_stimuli), values.shape[1]), dtype=np.float64)
    n = np.zeros((len(test_stimuli), values.shape[1]), dtype=np.int64)
    np.add.at(sums, codes[sel], np.where(finite, values[sel], 0))
    np.add.at(n, codes[sel], finite)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(n > 0, sums / np.maximum(n, 1), np.nan)
    return means.astype(np.float32), counts


def voxel_coords(betas: xr.Dataset) -> dict[str, np.ndarray]:
    """Per-voxel coordinates that locate each voxel: ``i, j, k`` in a volume, ``hemi,
    vertex`` on a surface (NSD fsaverage stores), whichever the store has."""
    for names in (("i", "j", "k"), ("hemi", "vertex")):
        if all(c in betas.coords for c in names):
            return {c: betas[c].values for c in names}
    raise BrainpipeInputError(
        "betas.zarr", "voxel", "no voxel coordinates (expected i, j, k or hemi, vertex)"
    )


class TrainingMeans:
    """Each voxel's mean over the finite values of training rows, added a block at a time.

    What :func:`fill_missing` fills missing values with: float32 sums added row after row
    (the order in which numpy's sum over the rows of a C-ordered array adds them, so the
    numbers of ``np.nanmean(train, axis=0)``), divided by the count of finite values; 0
    where a voxel has none. The whole array and the same rows streamed in blocks of any
    size give the same numbers, bit for bit.

    Parameters
    ----------
    n_voxels : int
    trials : ndarray of bool, optional
        The trials whose rows are added, when :func:`split_betas` streams a store.
    """

    def __init__(self, n_voxels: int, trials: np.ndarray | None = None) -> None:
        self.trials = trials
        self.total = np.zeros(n_voxels, dtype=np.float32)
        self.count = np.zeros(n_voxels, dtype=np.intp)
        #: Voxels with a missing (non-finite) value among the rows added.
        self.missing = np.zeros(n_voxels, dtype=bool)

    def add(self, rows: np.ndarray) -> None:
        """Add ``rows`` ``(n, n_voxels)`` (the next rows, in order)."""
        if not len(rows):
            return
        finite = np.isfinite(rows)
        self.missing |= ~finite.all(axis=0)
        self.count += finite.sum(axis=0)
        for row in np.where(finite, rows, 0):  # row after row, whatever the blocks
            np.add(self.total, row, out=self.total)

    def means(self) -> np.ndarray:
        """float32 means (0 where a voxel has no finite value)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (self.total.astype(np.float64) / self.count).astype(np.float32)
        return np.where(np.isfinite(mean), mean, 0).astype(np.float32)

    def fill(self, *arrays: np.ndarray) -> int:
        """Replace non-finite entries of ``arrays`` (in place) with the voxels' means;
        returns how many voxels had a missing value among the rows added."""
        if self.missing.any() or not all(np.isfinite(a).all() for a in arrays):
            mean = self.means()
            for a in arrays:
                missing = ~np.isfinite(a)
                a[missing] = mean[np.nonzero(missing)[1]]
        return int(self.missing.sum())


def fill_missing(train: np.ndarray, *others: np.ndarray) -> int:
    """Replace NaN (in place) with each voxel's mean over its finite training values.

    The mean comes from ``train`` alone (0 where a voxel has none; :class:`TrainingMeans`);
    ``others`` (test responses) are filled with the same training means. Returns how many
    voxels had a missing training value. Ridge and the decoders need finite inputs; a
    voxel NSD marks invalid in one session keeps its other sessions.
    """
    if np.isfinite(train).all() and all(np.isfinite(o).all() for o in others):
        return 0
    means = TrainingMeans(train.shape[1])
    for r0 in range(0, len(train), TRIAL_BLOCK):
        means.add(train[r0 : r0 + TRIAL_BLOCK])
    return means.fill(train, *others)


@dataclass
class LazyBetas:
    """The betas of a job left in the store: read all at once or a voxel block at a time.

    Attributes
    ----------
    betas : xarray.Dataset
        The ROI's lazy betas (:func:`roi_betas`).
    test_stimuli : ndarray of str
    train : ndarray of bool, shape (n_trials,)
    """

    betas: xr.Dataset
    test_stimuli: np.ndarray
    train: np.ndarray

    def read(self, voxels: slice | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:func:`split_betas` of ``voxels`` (all voxels when ``None``)."""
        betas = self.betas if voxels is None else self.betas.isel(voxel=voxels)
        train, test, counts = split_betas(betas, self.test_stimuli, self.train)
        return train, test, counts

    def read_trials(self, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Training trials ``keep`` (a mask over the training trials) and the test responses.

        One pass over the store, holding only those training trials: the test responses
        are averaged over every session as :meth:`read` averages them, and missing values
        are filled with the means over *every* training trial, as :meth:`JobData.load`
        then ``fill_missing`` would fill them. So the arrays are ``read()``'s restricted to
        ``keep``, bit for bit, without ever holding every training trial.

        Returns
        -------
        betas_train : ndarray of float32, shape (keep.sum(), n_voxels)
        betas_test : ndarray of float32, shape (n_test, n_voxels)
        n_voxels_filled : int
            Voxels with a missing value among every training trial (as ``load`` counts).
        """
        rows = np.zeros(len(self.train), dtype=bool)
        rows[np.flatnonzero(self.train)[keep]] = True
        means = TrainingMeans(int(self.betas.sizes["voxel"]), trials=self.train)
        train, test, _ = split_betas(self.betas, self.test_stimuli, rows, means=means)
        return train, test, means.fill(train, test)


@dataclass
class JobData:
    """Train and test arrays of one subject × ROI.

    Attributes
    ----------
    subject, roi : str
    betas_train : ndarray of float32, shape (n_train_trials, n_voxels), or None
        Single-trial betas (% signal change) of training trials; ``None`` until
        :meth:`load` in a lazy job (see :meth:`voxel_blocks`).
    stimuli_train : ndarray of str, shape (n_train_trials,)
    sessions_train : ndarray of str, shape (n_train_trials,)
    features_train : list of ndarray or ImageFeatures, each (n_train_trials, ...)
        One per feature store read: PCA features ``(n, n_features)`` in memory, spatial
        features ``(n, n_tokens, n_channels)`` as :class:`ImageFeatures` (read per image
        from the store; a model calls ``take`` per minibatch or ``np.asarray`` for all).
    test_stimuli : ndarray of str, shape (n_test,)
        Test-split stimuli the subject saw, sorted.
    betas_test : ndarray of float32, shape (n_test, n_voxels), or None
        Test responses averaged over repeats (``None`` like ``betas_train``).
    repeats_test : ndarray of int, shape (n_test,)
    features_test : list of ndarray or ImageFeatures, each (n_test, ...)
    voxel_ijk : ndarray of int32, shape (n_voxels, 3)
        ``i, j, k`` (-1 on a surface store: see ``voxel_coords``).
    feature_names : list of str
    voxel_coords : dict of str -> ndarray (n_voxels,)
        ``i, j, k`` or ``hemi, vertex``.
    n_voxels_filled : int
        Voxels with a missing (NaN / invalid) training value, filled by :func:`fill_missing`.
    source : LazyBetas or None
        Where a lazy job's betas are read from.
    disposable : bool
        The fitting code may overwrite ``betas_train`` / ``betas_test`` in place (a
        training job's own copy, read for this fit alone): decoders z-score them there
        instead of holding a second copy of every training trial.
    """

    subject: str
    roi: str
    betas_train: np.ndarray | None
    stimuli_train: np.ndarray
    sessions_train: np.ndarray
    features_train: list[np.ndarray]
    test_stimuli: np.ndarray
    betas_test: np.ndarray | None
    repeats_test: np.ndarray
    features_test: list[np.ndarray]
    voxel_ijk: np.ndarray
    feature_names: list[str]
    voxel_coords: dict[str, np.ndarray] = field(default_factory=dict)
    n_voxels_filled: int = 0
    source: LazyBetas | None = field(default=None, repr=False)
    disposable: bool = False

    @property
    def n_voxels(self) -> int:
        return int(len(self.voxel_ijk))

    @property
    def n_train(self) -> int:
        """Number of training trials."""
        return int(len(self.stimuli_train))

    def load(self) -> JobData:
        """Read the betas a lazy job (``load_job_data(..., lazy=True)``) left in the store.

        Returns ``self``, its ``betas_train`` and ``betas_test`` filled (a no-op when they
        are already in memory).
        """
        if self.betas_train is None:
            train, test, _ = self.source.read()
            self.n_voxels_filled = fill_missing(train, test)
            self.betas_train, self.betas_test = train, test
        return self

    def voxel_blocks(self, block: int) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
        """Training betas and test responses ``block`` voxels at a time.

        A lazy job reads each block from the store (one pass over the trials per block),
        so a model that fits voxels independently never holds the ROI's training betas at
        once; missing values are filled per block as :meth:`load` fills them (a voxel's
        fill uses that voxel alone). An in-memory job yields slices of its arrays.

        Yields
        ------
        voxels : slice
            The block's voxels.
        betas_train : ndarray of float32, shape (n_train, n_block)
        betas_test : ndarray of float32, shape (n_test, n_block)
        """
        step = max(1, int(block))
        if self.betas_train is not None:
            for v0 in range(0, self.n_voxels, step):
                sl = slice(v0, min(v0 + step, self.n_voxels))
                yield sl, self.betas_train[:, sl], self.betas_test[:, sl]
            return
        self.n_voxels_filled = 0
        for v0 in range(0, self.n_voxels, step):
            sl = slice(v0, min(v0 + step, self.n_voxels))
            train, test, _ = self.source.read(sl)
            self.n_voxels_filled += fill_missing(train, test)
            yield sl, train, test

    def restrict_sessions(self, sessions: list[str]) -> JobData:
        """The same job with training trials restricted to ``sessions`` (test unchanged).

        A lazy job (``load_job_data(..., lazy=True)``) reads just those trials from the
        store (:meth:`LazyBetas.read_trials`: an NSD session's 675 training trials, not
        all 27,000), and ``self`` stays lazy; the arrays are the ones loading every
        training trial and then keeping those would give, bit for bit.
        """
        keep = np.isin(self.sessions_train, [str(s) for s in sessions])
        if not keep.any():
            raise BrainpipeInputError(
                f"betas of sub-{self.subject}",
                "session",
                f"no training trials in sessions {sessions}"
                f" (has {sorted(set(self.sessions_train))})",
            )
        if self.betas_train is None:
            betas_train, betas_test, self.n_voxels_filled = self.source.read_trials(keep)
        else:
            betas_train, betas_test = self.betas_train[keep], self.betas_test
        return JobData(
            subject=self.subject,
            roi=self.roi,
            betas_train=betas_train,
            stimuli_train=self.stimuli_train[keep],
            sessions_train=self.sessions_train[keep],
            features_train=[
                f.subset(keep) if isinstance(f, ImageFeatures) else f[keep]
                for f in self.features_train
            ],
            test_stimuli=self.test_stimuli,
            betas_test=betas_test,
            repeats_test=self.repeats_test,
            features_test=self.features_test,
            voxel_ijk=self.voxel_ijk,
            feature_names=self.feature_names,
            voxel_coords=self.voxel_coords,
            n_voxels_filled=self.n_voxels_filled,
        )


def load_job_data(
    betas_path: str | Path,
    feature_paths: list[str | Path],
    splits_path: str | Path,
    roi: str,
    subject: str = "",
    min_train: int = 2,
    lazy: bool = False,
) -> JobData:
    """Load the train trials and averaged test responses of one subject × ROI.

    Parameters
    ----------
    betas_path : path
        ``betas.zarr`` of the subject.
    feature_paths : list of path
        Feature stores (``features(stimulus, ...)``) to read, in order.
    splits_path : path
        ``splits.tsv``.
    roi : str
        ROI name (``"all"``: union of the store's ROIs).
    subject : str
        Label stored in the result.
    min_train : int
        Fewest training trials accepted.
    lazy : bool
        Leave the betas in the store (``betas_train`` and ``betas_test`` None): the model
        reads them with :meth:`JobData.voxel_blocks` or :meth:`JobData.load`.

    Raises
    ------
    BrainpipeInputError
        Unknown ROI, stimulus without features or split, or too few training trials.
    """
    betas = roi_betas(betas_path, roi)
    splits = read_splits(splits_path)
    trial_stimuli = betas["stimulus"].values.astype(str)
    split = trial_split(trial_stimuli, splits, str(betas_path)).to_numpy()
    train = split == "train"
    if train.sum() < min_train:
        raise BrainpipeInputError(
            splits_path, "split", f"only {int(train.sum())} training trials (need {min_train})"
        )
    test_stimuli = np.array(sorted(set(trial_stimuli[~train])))
    if test_stimuli.size < 2:
        raise BrainpipeInputError(
            splits_path, "split", "fewer than 2 test stimuli for this subject"
        )
    stores = [open_zarr(p) for p in feature_paths]
    source = LazyBetas(betas, test_stimuli, train)
    codes = pd.Index(test_stimuli).get_indexer(trial_stimuli)
    repeats = np.bincount(codes[codes >= 0], minlength=len(test_stimuli))
    betas_train = betas_test = None
    filled = 0
    if not lazy:
        betas_train, betas_test, _ = source.read()
        filled = fill_missing(betas_train, betas_test)
    coords = voxel_coords(betas)
    return JobData(
        subject=subject or str(betas.attrs.get("subject", "")),
        roi=roi,
        betas_train=betas_train,
        stimuli_train=trial_stimuli[train],
        sessions_train=betas["session"].values.astype(str)[train],
        features_train=[
            trial_features(p, s, trial_stimuli[train])
            for s, p in zip(stores, feature_paths, strict=True)
        ],
        test_stimuli=test_stimuli,
        betas_test=betas_test,
        repeats_test=repeats,
        features_test=[
            trial_features(p, s, test_stimuli) for s, p in zip(stores, feature_paths, strict=True)
        ],
        voxel_ijk=np.stack(
            [coords.get(c, np.full(betas.sizes["voxel"], -1)) for c in "ijk"], axis=1
        ).astype(np.int32),
        voxel_coords=coords,
        n_voxels_filled=filled,
        source=source if lazy else None,
        feature_names=[
            str(s.attrs.get("feature_model", Path(p).stem))
            for s, p in zip(stores, feature_paths, strict=True)
        ],
    )


#: Columns per block when :func:`standardiser` walks a wide array (bounds its temporaries).
STANDARDISER_BLOCK = 1024


def zscore_in_place(A: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """``(A - mean) / sd`` written into ``A`` a block of rows at a time (no full-size
    temporaries): for a training job's own copy of its betas (``JobData.disposable``), which
    at NSD scale is most of the job's memory. Returns ``A``."""
    for r0 in range(0, len(A), 4096):
        A[r0 : r0 + 4096] -= mean
        A[r0 : r0 + 4096] /= sd
    return A


def standardiser(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and sd (sd 0 -> 1) of training rows: fitted on train data only.

    Computed a block of columns at a time, so the temporaries are one block's, not a copy
    of ``X`` (the numbers are those of ``X.mean(0)``, ``X.std(0)``: the same sums).
    """
    n_cols = X.shape[1] if X.ndim > 1 else 1
    if X.ndim != 2 or n_cols <= STANDARDISER_BLOCK:
        mean, sd = X.mean(axis=0), X.std(axis=0)
    else:
        mean = np.empty(n_cols, dtype=X.dtype)
        sd = np.empty(n_cols, dtype=X.dtype)
        for c0 in range(0, n_cols, STANDARDISER_BLOCK):
            cols = slice(c0, c0 + STANDARDISER_BLOCK)
            block = np.ascontiguousarray(X[:, cols])
            mean[cols], sd[cols] = block.mean(axis=0), block.std(axis=0)
    return mean.astype(np.float32), np.where(sd > 1e-8, sd, 1.0).astype(np.float32)
