"""M/EEG preprocessing with MNE, to ``epochs.zarr``.

Per recording (a THINGS-EEG2 partition file, a BIDS MEG run), in MNE:

1. channel selection (``channels``: ``all`` data channels, or regular expressions as
   THINGS-EEG2's publishers' ``^O *|^P *``, :func:`mne.pick_channels_regexp`),
2. band-pass filter of the continuous recording (:meth:`mne.io.Raw.filter`,
   ``l_freq`` / ``h_freq``; ``null`` skips a side),
3. epochs ``tmin``..``tmax`` around each image onset with baseline ``(None, 0)``
   (:class:`mne.Epochs`), built ``batch_trials`` at a time so memory stays bounded,
4. resampling of the epochs to ``sfreq`` (:meth:`mne.Epochs.resample`; THINGS-EEG2's
   publishers resample epochs the same way).

Then, per session, multivariate noise normalisation (MVNN, Guggenmos et al. 2018) whose
covariance comes from the session's **training** epochs only: the residuals of each
training epoch around the mean of its stimulus' repetitions (``mvnn_noise: repeats``,
what THINGS-EEG2's publishers do, minus their use of test epochs) or the pre-stimulus part
of each training epoch (``mvnn_noise: baseline``, for designs without repeated training
images such as THINGS-MEG), pooled over time points, Ledoit-Wolf shrunk; every epoch is
multiplied by its inverse square root. Test epochs never enter the covariance, so changing
them changes no fitted parameter.

The store: ``epochs(trial, channel, time)`` float32 with the trial coords of betas.zarr
(``stimulus, session, run, split``, plus ``onset`` in seconds and ``sample``), channel
names, types and positions (``x, y, z`` in m, head frame), ``time`` in s, and the
per-session ``whitener(mvnn_session, channel, channel_in)``. Sessions are appended one at a
time to a temporary store that is renamed into place at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainpipe.errors import BrainpipeInputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MeegPreprocessParams:
    """The config's ``meeg`` block (defaults: THINGS-EEG2's publishers, plus a band-pass)."""

    channels: Any = "all"
    l_freq: float | None = 0.1
    h_freq: float | None = 40.0
    tmin: float = -0.2
    tmax: float = 0.8
    baseline: tuple[float | None, float | None] | None = (None, 0.0)
    sfreq: float | None = 100.0
    mvnn: bool = True
    mvnn_noise: str = "repeats"
    batch_trials: int = 500

    def __post_init__(self) -> None:
        if not self.tmin < 0 < self.tmax:
            raise BrainpipeInputError(
                "config", "meeg.tmin", f"need tmin < 0 < tmax, got {self.tmin}, {self.tmax}"
            )
        if self.mvnn_noise not in ("repeats", "baseline"):
            raise BrainpipeInputError(
                "config",
                "meeg.mvnn_noise",
                f"expected repeats or baseline, got {self.mvnn_noise!r}",
            )
        if self.channels != "all" and not (
            isinstance(self.channels, list | tuple)
            and all(isinstance(c, str) for c in self.channels)
        ):
            raise BrainpipeInputError(
                "config",
                "meeg.channels",
                f"expected 'all' or a list of regexes, got {self.channels!r}",
            )

    @classmethod
    def from_config(cls, block: dict[str, Any] | None) -> MeegPreprocessParams:
        block = dict(block or {})
        known = set(cls.__dataclass_fields__)
        for key in block:
            if key not in known:
                raise BrainpipeInputError(
                    "config", f"meeg.{key}", f"unknown key; known: {sorted(known)}"
                )
        if block.get("baseline") is not None:
            block["baseline"] = tuple(block["baseline"])
        return cls(**block)


@dataclass
class Recording:
    """One continuous recording and how to load it.

    ``load()`` returns ``(raw, trials)``: an :class:`mne.io.Raw` and a table with columns
    ``sample`` (onset, in samples counted like :func:`mne.find_events`) and ``stimulus``.
    """

    session: str
    run: str
    source: str
    load: Callable[[], tuple[Any, pd.DataFrame]] = field(repr=False)


def things_eeg2_recordings(
    root: str | Path, subject: str, sessions: Iterable[str]
) -> list[Recording]:
    """The training and test file of every session of a THINGS-EEG2 subject."""
    from brainpipe.meeg import things_eeg2

    out = []
    for session in sessions:
        for partition in things_eeg2.PARTITIONS:
            path = things_eeg2.raw_path(Path(root, "raw_data"), subject, session, partition)

            def load(path=path, partition=partition):

                raw, events = things_eeg2.read_raw_and_events(path)
                events = events[events[:, 2] != things_eeg2.TARGET_EVENT]
                stimuli = [things_eeg2.stimulus_id(partition, v) for v in events[:, 2]]
                return raw, pd.DataFrame({"sample": events[:, 0], "stimulus": stimuli})

            if not path.exists():
                raise BrainpipeInputError(path, "<file>", "THINGS-EEG2 raw file is missing")
            out.append(Recording(session, partition, str(path), load))
    return out


def bids_meg_recordings(
    root: str | Path, subject: str, sessions: Iterable[str] | None = None, task: str = "main"
) -> list[Recording]:
    """Every MEG run of a BIDS subject (THINGS-MEG), optionally only some sessions."""
    from brainpipe.meeg import bids_meg

    wanted = set(sessions) if sessions else None
    out = []
    for session, run in bids_meg.find_runs(root, subject, task):
        if wanted is not None and session not in wanted:
            continue

        def load(session=session, run=run):
            raw, trials = bids_meg.read_run(root, subject, session, run, task)
            return raw, trials[["sample", "stimulus"]]

        out.append(Recording(session, run, f"{root}/sub-{subject} ses-{session} run-{run}", load))
    return out


def pick_data_channels(raw, channels: Any) -> list[str]:
    """Names of the data channels kept: all EEG/MEG ones, or those matching the regexes."""
    import mne

    data = [raw.ch_names[i] for i in mne.pick_types(raw.info, meg=True, eeg=True, ref_meg=False)]
    if channels == "all":
        keep = data
    else:
        picked = set()
        for pattern in channels:
            picked.update(data[i] for i in mne.pick_channels_regexp(data, pattern))
        keep = [c for c in data if c in picked]
    if not keep:
        raise BrainpipeInputError("config", "meeg.channels", f"{channels!r} selects no channel")
    return keep


def epoch_recording(
    raw, trials: pd.DataFrame, params: MeegPreprocessParams
) -> tuple[np.ndarray, pd.DataFrame, Any]:
    """Filter, epoch, baseline-correct and resample one recording.

    Returns
    -------
    data : ndarray, shape (n_kept, n_channels, n_times), float32
    trials : DataFrame
        The rows of ``trials`` whose epochs MNE kept (an epoch reaching past the
        recording's end is dropped), with ``onset`` (s) added.
    info : mne.Info
        Of the epochs (channels kept, final sampling rate).
    """
    import mne

    keep = pick_data_channels(raw, params.channels)
    raw.pick(keep)
    if params.l_freq is not None or params.h_freq is not None:
        raw.filter(params.l_freq, params.h_freq, picks="data", n_jobs=1, verbose="error")
    events = np.stack(
        [trials["sample"].to_numpy(int), np.zeros(len(trials), int), np.ones(len(trials), int)],
        axis=1,
    )
    chunks, kept, info = [], [], None
    step = max(1, int(params.batch_trials))
    for start in range(0, len(events), step):
        epochs = mne.Epochs(
            raw, events[start : start + step], event_id={"image": 1}, tmin=params.tmin,
            tmax=params.tmax, baseline=params.baseline, picks="data", preload=True,
            reject=None, flat=None, reject_by_annotation=False, verbose="error",
        )  # fmt: skip
        if params.sfreq is not None and params.sfreq != epochs.info["sfreq"]:
            epochs.resample(params.sfreq, verbose="error")
        chunks.append(epochs.get_data(copy=False).astype(np.float32))
        kept.append(start + epochs.selection)
        info = epochs.info
        times = epochs.times
        del epochs
    if not chunks:
        raise BrainpipeInputError("recording", "events", "no image onsets")
    rows = trials.iloc[np.concatenate(kept)].copy()
    rows["onset"] = (rows["sample"] - raw.first_samp) / raw.info["sfreq"]
    data = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    return data, rows.reset_index(drop=True), (info, times)


@dataclass
class _LedoitWolf:
    """Streaming Ledoit-Wolf covariance of zero-mean samples (sklearn's formula, exactly)."""

    n_features: int
    n: int = 0
    sxx: np.ndarray | None = None
    sum_sq4: float = 0.0

    def update(self, samples: np.ndarray) -> None:
        x = np.asarray(samples, dtype=np.float64)
        self.sxx = x.T @ x if self.sxx is None else self.sxx + x.T @ x
        sq = np.einsum("ij,ij->i", x, x)
        self.sum_sq4 += float(sq @ sq)
        self.n += x.shape[0]

    def finish(self) -> tuple[np.ndarray, float]:
        if self.n < 2 or self.sxx is None:
            raise ValueError("too few samples for a covariance")
        s = self.sxx / self.n
        p = self.n_features
        mu = np.trace(s) / p
        delta = ((s - mu * np.eye(p)) ** 2).sum()
        beta = (self.sum_sq4 / self.n - (s**2).sum()) / self.n
        shrinkage = 0.0 if delta == 0 else min(beta, delta) / delta
        return (1 - shrinkage) * s + shrinkage * mu * np.eye(p), float(shrinkage)


def noise_covariance(
    data: np.ndarray,
    stimuli: np.ndarray,
    times: np.ndarray,
    noise: str = "repeats",
    block: int = 512,
) -> tuple[np.ndarray, float, int]:
    """MVNN noise covariance ``(channel, channel)`` of ``data`` (the training epochs only).

    ``repeats``: residuals of each epoch around the mean of its stimulus' epochs, scaled
    by ``sqrt(n / (n - 1))`` (unbiased), stimuli with one epoch skipped; ``baseline``:
    the pre-stimulus samples (``time < 0``) of each epoch around their own mean.
    Samples are channel vectors pooled over time points; Ledoit-Wolf shrinkage.

    Returns
    -------
    cov : ndarray, (n_channels, n_channels)
    shrinkage : float
    n_epochs : int
        Epochs that contributed.
    """
    n_ch = data.shape[1]
    acc = _LedoitWolf(n_ch)
    used = 0
    if noise == "baseline":
        pre = times < 0
        for start in range(0, len(data), block):
            x = data[start : start + block][:, :, pre].astype(np.float64)
            x -= x.mean(axis=2, keepdims=True)
            acc.update(x.transpose(0, 2, 1).reshape(-1, n_ch))
            used += len(x)
    else:
        codes, _ = pd.factorize(np.asarray(stimuli))
        counts = np.bincount(codes)
        order = np.argsort(codes, kind="stable")
        order = order[counts[codes[order]] >= 2]
        bounds = np.flatnonzero(np.diff(codes[order])) + 1
        groups = np.split(order, bounds) if len(order) else []
        for g0 in range(0, len(groups), max(1, block // 4)):
            idx = groups[g0 : g0 + max(1, block // 4)]
            sizes = np.array([len(i) for i in idx])
            flat = np.concatenate(idx)
            x = data[flat].astype(np.float64)
            starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            means = np.add.reduceat(x, starts, axis=0) / sizes[:, None, None]
            x -= np.repeat(means, sizes, axis=0)
            x *= np.repeat(np.sqrt(sizes / (sizes - 1)), sizes)[:, None, None]
            acc.update(x.transpose(0, 2, 1).reshape(-1, n_ch))
            used += len(flat)
    if used == 0:
        raise BrainpipeInputError(
            "epochs",
            "meeg.mvnn_noise",
            "no training epochs to estimate the noise covariance from (mvnn_noise: repeats "
            "needs training images shown twice per session; use baseline, or mvnn: false)",
        )
    cov, shrinkage = acc.finish()
    return cov, shrinkage, used


def inverse_sqrt(cov: np.ndarray) -> np.ndarray:
    """``cov^(-1/2)`` of a symmetric positive-definite matrix (eigendecomposition)."""
    vals, vecs = np.linalg.eigh(cov)
    vals = np.maximum(vals, vals.max() * 1e-12)
    return (vecs / np.sqrt(vals)) @ vecs.T


def _channel_coords(info) -> dict[str, tuple[str, np.ndarray]]:
    # positions: MNE's head frame (EEG montage) or device frame (MEG sensors), metres
    locs = np.array([ch["loc"][:3] for ch in info["chs"]], dtype=np.float64)
    types = np.array(info.get_channel_types(), dtype=object)
    return {
        "ch_type": ("channel", types),
        "x": ("channel", locs[:, 0]),
        "y": ("channel", locs[:, 1]),
        "z": ("channel", locs[:, 2]),
    }


def preprocess_subject(
    recordings: list[Recording],
    splits: pd.Series,
    out: str | Path,
    params: MeegPreprocessParams,
    attrs: dict[str, Any] | None = None,
) -> Path:
    """Preprocess every recording of a subject into ``out`` (``epochs.zarr``), atomically.

    Parameters
    ----------
    recordings : list of Recording
        In acquisition order; grouped by session for MVNN.
    splits : pandas.Series
        stimulus -> "train" / "test" (:func:`brainpipe.splits.read_splits`).
    out : path
        The store to write.
    params : MeegPreprocessParams
    attrs : dict, optional
        Extra store attributes (dataset, subject, config hash...).
    """
    import xarray as xr

    from brainpipe.splits import trial_split
    from brainpipe.storage import (
        atomic_path,
        portable_strings,
        provenance_attrs,
        quiet_consolidated,
    )

    sessions = list(dict.fromkeys(r.session for r in recordings))
    if not sessions:
        raise BrainpipeInputError(str(out), "recordings", "no recordings to preprocess")
    whiteners, shrinkages, n_noise = [], [], []
    n_done = 0
    out = Path(out)
    with atomic_path(out) as tmp, quiet_consolidated():
        for session in sessions:
            parts, tables, meta = [], [], None
            for rec in (r for r in recordings if r.session == session):
                raw, trials = rec.load()
                data, rows, meta = epoch_recording(raw, trials, params)
                del raw
                rows["split"] = trial_split(rows["stimulus"], splits, rec.source).to_numpy()
                rows["session"], rows["run"] = session, rec.run
                parts.append(data)
                tables.append(rows)
                log.info("%s: %d epochs", rec.source, len(rows))
            data = np.concatenate(parts) if len(parts) > 1 else parts[0]
            del parts
            table = pd.concat(tables, ignore_index=True)
            info, times = meta
            n_ch = data.shape[1]
            if params.mvnn:
                train = np.flatnonzero(table["split"].to_numpy() == "train")
                cov, shrink, used = noise_covariance(
                    data[train], table["stimulus"].to_numpy()[train], times, params.mvnn_noise
                )
                w = inverse_sqrt(cov)
                for start in range(0, len(data), 1024):
                    block = data[start : start + 1024].astype(np.float64)
                    data[start : start + 1024] = np.einsum("ij,njt->nit", w, block)
            else:
                w, shrink, used = np.eye(n_ch), 0.0, 0
            whiteners.append(w.astype(np.float32))
            shrinkages.append(shrink)
            n_noise.append(used)
            idx = np.arange(n_done, n_done + len(table))
            n_done += len(table)
            ds = xr.Dataset(
                {"epochs": (("trial", "channel", "time"), data)},
                coords={
                    "trial": idx,
                    "stimulus": ("trial", table["stimulus"].astype(str).to_numpy().astype(object)),
                    "session": ("trial", table["session"].astype(str).to_numpy().astype(object)),
                    "run": ("trial", table["run"].astype(str).to_numpy().astype(object)),
                    "split": ("trial", table["split"].astype(str).to_numpy().astype(object)),
                    "onset": ("trial", table["onset"].to_numpy(np.float64)),
                    "sample": ("trial", table["sample"].to_numpy(np.int64)),
                    "channel": np.asarray(info["ch_names"], dtype=object),
                    "time": np.round(times, 9),
                    **_channel_coords(info),
                },
            )
            chunk = max(1, min(len(table), (32 << 20) // max(1, 4 * n_ch * len(times))))
            if session == sessions[0]:
                ds["epochs"].encoding["chunks"] = (chunk, n_ch, len(times))
                ds.attrs = {
                    "sfreq": float(info["sfreq"]),
                    "units": "whitened (MVNN)"
                    if params.mvnn
                    else ("V" if "eeg" in ds["ch_type"].values else "T"),
                    "params": __import__("json").dumps(asdict(params)),
                    **provenance_attrs(asdict(params)),
                    **(attrs or {}),
                }
                portable_strings(ds).to_zarr(tmp, mode="w", zarr_format=3, consolidated=False)
            else:
                ds = ds.drop_vars(["channel", "time", "ch_type", "x", "y", "z"])
                portable_strings(ds).to_zarr(
                    tmp, append_dim="trial", zarr_format=3, consolidated=False
                )
            del data, ds
        extra = xr.Dataset(
            {
                "whitener": (("mvnn_session", "channel", "channel_in"), np.stack(whiteners)),
                "mvnn_shrinkage": ("mvnn_session", np.asarray(shrinkages)),
                "mvnn_epochs": ("mvnn_session", np.asarray(n_noise, dtype=np.int64)),
            },
            coords={"mvnn_session": np.asarray(sessions, dtype=object)},
        )
        portable_strings(extra).to_zarr(tmp, mode="a", zarr_format=3, consolidated=False)
        import zarr

        zarr.consolidate_metadata(str(tmp))
    return out
