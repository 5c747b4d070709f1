"""The shared-response-over-time stage of the workflow: inputs, held-out fits, scores.

Three job kinds (``rules/timeseries.smk``), each one function here:

- :func:`write_timeseries_input` — one subject's time series on the common stimulus clock,
  ``timeseries/sub-{subject}.zarr``: ``bold(time, voxel)`` float32 with coords
  ``split(time)`` (``train`` / ``test``: the first ``timeseries.train_fraction`` of the
  clock is training) and, for runs of a preprocessed dataset, ``session``, ``run``,
  ``scan``. Source ``synthetic_movie``: the subject of the synthetic movie world
  (:mod:`brainpipe.datasets.synthetic_movie`), with the world's ``true_latents(time,
  latent)``; source ``preprocess``: the configured shared-stimulus runs of the subject's
  ``preproc.zarr``, in the configured order (censored volumes stay NaN).
- :func:`fit_heldout` — one method, one held-out subject: the method is fitted on the
  OTHER subjects' training time points; the held-out subject's map is then fitted on its
  own training time points against the shared response (orthogonal Procrustes); every
  subject's test time points are projected, and the held-out subject's test segments are
  matched against the others' average (:func:`brainpipe.align.timeseries.match_segments`).
  Test time points enter nothing fitted: z-scoring statistics, maps, shared response and
  S-GPFA's length scale all come from training time points (a test checks by construction
  that changing test data leaves every fitted map unchanged). Writes
  ``timeseries/{method}/sub-{subject}.zarr`` (the held-out subject's map, every subject's
  test shared response) and ``.json`` (the metrics).
- :func:`collect_matching` — every job's metrics into ``timeseries/matching.tsv`` (one row
  per method × held-out subject) and ``timeseries/matching.json`` (per method: mean
  accuracy, chance, the ratio and, on the synthetic movie, recovery of the true latents).

Time points censored in any subject (NaN) are left out of every subject's fit and test, so
the subjects stay on one clock.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from brainpipe.align.timeseries import (
    LENGTH_SCALES,
    TIMESERIES_METHODS,
    fit_shared_space,
    match_segments,
    subspace_recovery,
)
from brainpipe.errors import BrainpipeInputError
from brainpipe.storage import open_zarr, provenance_attrs, write_text_atomic, write_zarr

log = logging.getLogger(__name__)

#: Sources of the time series: ``timeseries.source``.
SOURCES = ("synthetic_movie", "preprocess")

#: Defaults of the ``timeseries`` config block (documented in config/README.md).
DEFAULTS: dict[str, Any] = {
    "source": None,
    "runs": [],
    "methods": ["srm", "detsrm", "sgpfa"],
    "n_components": 10,
    "n_iter": 10,
    "train_fraction": 0.5,
    "window": 10,
    "seed": 0,
    "length_scales": list(LENGTH_SCALES),
    "synthetic_movie": {},
}

KEY = "timeseries"


def timeseries_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``timeseries`` block of ``config`` over :data:`DEFAULTS`."""
    return {**DEFAULTS, **(config.get(KEY) or {})}


def timeseries_enabled(config: Mapping[str, Any]) -> bool:
    """True when the config asks for the time-series stage (a source and >= 1 method)."""
    p = timeseries_params(config)
    return p["source"] is not None and bool(p["methods"])


def movie_params(config: Mapping[str, Any]):
    """The synthetic movie world of ``config``: one movie subject per config subject."""
    from brainpipe.datasets.synthetic_movie import MovieParams

    block = dict(timeseries_params(config)["synthetic_movie"])
    return MovieParams(**{**block, "n_subjects": len(config["subjects"])})


def check_timeseries_config(config: Mapping[str, Any], source: str = "config") -> None:
    """Checks of the ``timeseries`` block that the schema cannot make (at DAG build).

    Raises
    ------
    BrainpipeInputError
        Naming the key, the value received and what was expected.
    """
    if not timeseries_enabled(config):
        return
    p = timeseries_params(config)
    subjects = list(config["subjects"])
    if len(subjects) < 3:
        raise BrainpipeInputError(
            source,
            "subjects",
            f"the time-series stage fits on all subjects but one and matches the held-out "
            f"one against the others' average: needs >= 3 subjects, got {subjects}",
        )
    for method in p["methods"]:
        if method not in TIMESERIES_METHODS:
            raise BrainpipeInputError(
                source, f"{KEY}.methods", f"{method!r} is not one of {list(TIMESERIES_METHODS)}"
            )
    if p["source"] == "preprocess":
        if not p["runs"]:
            raise BrainpipeInputError(
                source,
                f"{KEY}.runs",
                "source 'preprocess' needs the shared-stimulus runs, e.g. "
                "[{session: '01', run: '01'}] (every subject saw them in this order)",
            )
        sessions, runs = {str(s) for s in config["sessions"]}, {str(r) for r in config["runs"]}
        for entry in p["runs"]:
            if str(entry["session"]) not in sessions or str(entry["run"]) not in runs:
                raise BrainpipeInputError(
                    source,
                    f"{KEY}.runs",
                    f"{entry} is not a preprocessed run: sessions {sorted(sessions)}, "
                    f"runs {sorted(runs)}",
                )
    elif p["source"] == "synthetic_movie":
        try:
            movie = movie_params(config)
        except TypeError as err:
            raise BrainpipeInputError(source, f"{KEY}.synthetic_movie", str(err)) from None
        n_train, n_test = _split_sizes(movie.n_timepoints, p["train_fraction"])
        if n_test - p["window"] + 1 < 2 or n_train < p["n_components"]:
            raise BrainpipeInputError(
                source,
                f"{KEY}.window",
                f"{movie.n_timepoints} time points split {n_train} train / {n_test} test "
                f"leave fewer than 2 test segments of {p['window']} or fewer training time "
                f"points than n_components {p['n_components']}",
            )
        if p["n_components"] > movie.min_voxels:
            raise BrainpipeInputError(
                source,
                f"{KEY}.n_components",
                f"{p['n_components']} > the movie world's fewest voxels ({movie.min_voxels})",
            )


def _split_sizes(n_timepoints: int, train_fraction: float) -> tuple[int, int]:
    n_train = int(round(n_timepoints * train_fraction))
    return n_train, n_timepoints - n_train


def write_timeseries_input(
    subject: str,
    out_path: str | Path,
    config: Mapping[str, Any],
    preproc: str | Path | None = None,
) -> Path:
    """Write one subject's time series on the common clock (layout in the module docstring).

    Parameters
    ----------
    subject : str
        Label without ``sub-``; one of ``config["subjects"]``.
    out_path : path
        ``timeseries/sub-{subject}.zarr``, written atomically.
    config : mapping
        The workflow config (its ``timeseries`` block and ``subjects``).
    preproc : path, optional
        The subject's ``preproc.zarr`` (source ``preprocess``).
    """
    p = timeseries_params(config)
    attrs: dict[str, Any] = {
        "subject": subject,
        "source": p["source"],
        "stage": "timeseries",
        **provenance_attrs(config),
    }
    if p["source"] == "synthetic_movie":
        from brainpipe.datasets.synthetic_movie import generate_movie

        world = generate_movie(movie_params(config))
        index = list(config["subjects"]).index(subject)
        data = world.data[index]
        extra = {"true_latents": (("time", "latent"), world.latents)}
        coords: dict[str, Any] = {}
        attrs["tr"] = float(config.get("tr", 1.0))
    elif p["source"] == "preprocess":
        if preproc is None:
            raise ValueError("source 'preprocess' needs the subject's preproc.zarr")
        ds = open_zarr(preproc)
        parts = []
        for entry in p["runs"]:
            sel = (ds["session"].values == str(entry["session"])) & (
                ds["run"].values == str(entry["run"])
            )
            if not sel.any():
                present = sorted(set(zip(ds["session"].values, ds["run"].values, strict=True)))
                raise BrainpipeInputError(
                    str(preproc),
                    "session/run",
                    f"no time points of session {entry['session']} run {entry['run']} "
                    f"(session, run present: {present})",
                )
            parts.append(np.flatnonzero(sel))
        idx = np.concatenate(parts)
        sub = ds.isel(time=idx)
        data = np.asarray(sub["bold"].values, np.float32)
        coords = {
            name: ("time", np.asarray(sub[name].values)) for name in ("session", "run", "scan")
        }
        extra = {}
        attrs["tr"] = float(ds.attrs.get("tr", 0.0))
    else:
        raise BrainpipeInputError(
            "config", f"{KEY}.source", f"{p['source']!r} is not one of {list(SOURCES)}"
        )
    n_train, _ = _split_sizes(data.shape[0], p["train_fraction"])
    split = np.where(np.arange(data.shape[0]) < n_train, "train", "test")
    out = xr.Dataset(
        {"bold": (("time", "voxel"), data), **extra},
        coords={"split": ("time", split), **coords},
        attrs=attrs,
    )
    return write_zarr(out, out_path)


def _load(stores: Mapping[str, str | Path]) -> dict[str, xr.Dataset]:
    loaded = {s: open_zarr(path) for s, path in stores.items()}
    lengths = {s: ds.sizes["time"] for s, ds in loaded.items()}
    if len(set(lengths.values())) != 1:
        raise BrainpipeInputError(
            str(next(iter(stores.values()))),
            "time",
            f"subjects are not on one clock: time points per subject {lengths}",
        )
    return loaded


def fit_heldout(
    stores: Mapping[str, str | Path],
    heldout: str,
    method: str,
    params: Mapping[str, Any],
) -> tuple[xr.Dataset, dict[str, Any]]:
    """Fit ``method`` without ``heldout``; map it in from its training time; match its test.

    Parameters
    ----------
    stores : mapping of subject -> path
        Every subject's ``timeseries/sub-{subject}.zarr``.
    heldout : str
        The subject left out of the group fit.
    method : {"srm", "detsrm", "sgpfa"}
    params : mapping
        The ``timeseries`` block (:func:`timeseries_params`).

    Returns
    -------
    store : xarray.Dataset
        ``w(voxel, component)`` of the held-out subject and ``shared(subject, time,
        component)``: every subject's test time series in the shared space.
    metrics : dict
        ``accuracy``, ``chance``, ``n_segments``, ``n_train``, ``n_test``, ``window``,
        and with true latents ``latent_cc`` (canonical correlations of the subjects' mean
        test shared response with the true latents) and ``latent_cc_mean``.
    """
    data = _load(stores)
    subjects = list(stores)
    split = data[heldout]["split"].values
    bold = {s: np.asarray(ds["bold"].values, np.float64) for s, ds in data.items()}
    finite = np.logical_and.reduce([np.isfinite(x).all(axis=1) for x in bold.values()])
    train_t = (split == "train") & finite
    test_t = (split == "test") & finite
    n_comp = int(params["n_components"])
    if train_t.sum() < n_comp or test_t.sum() - int(params["window"]) + 1 < 2:
        raise BrainpipeInputError(
            str(stores[heldout]),
            "split",
            f"{int(train_t.sum())} training / {int(test_t.sum())} test time points usable "
            f"in every subject: too few for {n_comp} components and segments of "
            f"{params['window']}",
        )
    train, test = {}, {}
    for s, x in bold.items():
        if x.shape[1] < n_comp:
            raise BrainpipeInputError(
                str(stores[s]), "voxel", f"{x.shape[1]} voxels < n_components {n_comp}"
            )
        mean = x[train_t].mean(axis=0)  # z-scoring statistics from training time only
        sd = x[train_t].std(axis=0)
        sd = np.where(sd > 0, sd, 1.0)
        train[s] = (x[train_t] - mean) / sd
        test[s] = (x[test_t] - mean) / sd
    others = [s for s in subjects if s != heldout]
    space = fit_shared_space(
        [train[s] for s in others],
        method,
        n_comp,
        n_iter=int(params["n_iter"]),
        seed=int(params["seed"]),
        length_scales=params["length_scales"],
    )
    w_h, sigma2_h = space.add_subject(train[heldout])
    maps = {s: (space.w[i], space.sigma2[i]) for i, s in enumerate(others)}
    maps[heldout] = (w_h, sigma2_h)
    shared = {s: space.to_shared(test[s], *maps[s]) for s in subjects}
    reference = np.mean([shared[s] for s in others], axis=0)
    metrics: dict[str, Any] = {
        "method": method,
        "subject": heldout,
        **match_segments(shared[heldout], reference, int(params["window"])),
        "window": int(params["window"]),
        "n_train": int(train_t.sum()),
        "n_test": int(test_t.sum()),
        "n_components": n_comp,
        "n_voxels": int(bold[heldout].shape[1]),
        "length_scale": space.length_scale,
    }
    if "true_latents" in data[heldout]:
        truth = np.asarray(data[heldout]["true_latents"].values, np.float64)[test_t]
        cc = subspace_recovery(np.mean(list(shared.values()), axis=0), truth)
        metrics["latent_cc"] = [float(v) for v in cc]
        metrics["latent_cc_mean"] = float(np.mean(cc))
        metrics["heldout_latent_cc_mean"] = float(
            np.mean(subspace_recovery(shared[heldout], truth))
        )
    store = xr.Dataset(
        {
            "w": (("voxel", "component"), w_h.astype(np.float32)),
            "shared": (
                ("subject", "time", "component"),
                np.stack([shared[s] for s in subjects]).astype(np.float32),
            ),
        },
        coords={"subject": subjects, "time": np.flatnonzero(test_t)},
        attrs={
            "method": method,
            "heldout": heldout,
            "fitted_on": "training time points of the other subjects; held-out map from "
            "its own training time points",
            "metrics": json.dumps(metrics),
        },
    )
    return store, metrics


def write_heldout_fit(
    stores: Mapping[str, str | Path],
    heldout: str,
    method: str,
    out_store: str | Path,
    out_json: str | Path,
    config: Mapping[str, Any],
    threads: int = 1,
) -> dict[str, Any]:
    """:func:`fit_heldout` with the config's ``timeseries`` block; write both outputs.

    BLAS runs on the job's ``threads`` (spinning BLAS threads on a shared core make the
    small eigen-decompositions of S-GPFA ~25x slower).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=max(1, int(threads))):
        store, metrics = fit_heldout(stores, heldout, method, timeseries_params(config))
    store.attrs.update(provenance_attrs(config))
    write_zarr(store, out_store)
    write_text_atomic(json.dumps(metrics, indent=1), out_json)
    log.info(
        "%s, held-out sub-%s: segment matching %.3f (chance %.4f, %d segments)",
        method,
        heldout,
        metrics["accuracy"],
        metrics["chance"],
        metrics["n_segments"],
    )
    return metrics


def collect_matching(
    metric_files: Sequence[str | Path], out_tsv: str | Path, out_json: str | Path
) -> pd.DataFrame:
    """Every held-out job's metrics into one table and a per-method summary.

    Returns
    -------
    DataFrame
        One row per method × held-out subject: ``method``, ``subject``, ``accuracy``,
        ``chance``, ``n_segments``, ``window``, ``n_train``, ``n_test``,
        ``n_components`` (+ ``latent_cc_mean``, ``heldout_latent_cc_mean`` on the
        synthetic movie).
    """
    rows = []
    for path in metric_files:
        m = json.loads(Path(path).read_text())
        rows.append({k: v for k, v in m.items() if k != "latent_cc"})
    table = pd.DataFrame(rows).sort_values(["method", "subject"]).reset_index(drop=True)
    write_text_atomic(table.to_csv(sep="\t", index=False), out_tsv)
    summary = {}
    for method, group in table.groupby("method", sort=True):
        entry = {
            "accuracy": float(group["accuracy"].mean()),
            "chance": float(group["chance"].mean()),
            "accuracy_over_chance": float(group["accuracy"].mean() / group["chance"].mean()),
            "per_subject": dict(
                zip(group["subject"], group["accuracy"].astype(float), strict=True)
            ),
            "n_segments": int(group["n_segments"].iloc[0]),
            "window": int(group["window"].iloc[0]),
        }
        if "latent_cc_mean" in group:
            entry["latent_cc_mean"] = float(group["latent_cc_mean"].mean())
        summary[method] = entry
    write_text_atomic(json.dumps(summary, indent=1), out_json)
    return table
