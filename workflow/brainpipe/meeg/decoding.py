"""M/EEG decoding models and zero-shot retrieval scores.

Two models, registered in the model zoo (:mod:`brainpipe.models.registry`, ``inputs:
epochs``) and fanned out per subject x model x feature model like the fMRI ones:

- ``timedecoder``: time-resolved linear decoding. At every time point a ridge map
  (penalty chosen by leave-one-out GCV on training stimuli) from the channels to the image
  embedding is fitted on training epochs; the test images' averaged epochs are mapped and
  identified among the test images (top-1 over time: *accuracy over time*). Its overall
  prediction is a ridge map from the whole epoch (channels x times).
- ``nice``: a NICE-style contrastive EEG encoder (Song et al. 2024): temporal convolution,
  average pooling, spatial convolution across all channels, a 1x1 convolution, then a
  projection head (linear, GELU, linear with a residual, dropout, layer norm) to the
  embedding, trained with the symmetric InfoNCE (CLIP) loss against the image embeddings
  of the feature registry (``features/{features}.zarr``).

Both read ``epochs.zarr`` and fit on training epochs only; test epochs are only mapped.
Averaging repetitions is the model's choice (``average_train``; test repetitions are
averaged per image, as THINGS-EEG2's zero-shot benchmarks do).

Zero-shot retrieval (:func:`retrieval_scores`): for each test image, its predicted
embedding's similarity to the true embeddings of ``n_way`` candidates (itself plus
``n_way - 1`` other test images drawn at random, ``n_draws`` times; all test images when
``n_way`` is at least their number); top-1 / top-5 hit rates with chance ``1/n_way``,
``5/n_way`` and bootstrap CIs over test images.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainpipe.errors import BrainpipeInputError
from brainpipe.models.registry import FitResult, register_model

log = logging.getLogger(__name__)

CI_LEVEL = 0.95


@dataclass
class EpochsJob:
    """What an M/EEG model job sees.

    Attributes
    ----------
    X_train : ndarray, (n_train, n_channels, n_times) float32
        Training epochs (one row per epoch, or per image if averaged).
    stim_train : ndarray of str, (n_train,)
    Y_train : ndarray, (n_train, n_dims)
        Embedding of each training row's image.
    X_test : ndarray, (n_test_images, n_channels, n_times)
        Test epochs averaged per image.
    test_stimuli : ndarray of str
    Y_test : ndarray, (n_test_images, n_dims)
        True embeddings of the test images (used for scoring only).
    times : ndarray, (n_times,)
    """

    X_train: np.ndarray
    stim_train: np.ndarray
    Y_train: np.ndarray
    X_test: np.ndarray
    test_stimuli: np.ndarray
    Y_test: np.ndarray
    times: np.ndarray


def _average_by(X: np.ndarray, stimuli: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids, codes = np.unique(stimuli, return_inverse=True)
    out = np.zeros((len(ids), *X.shape[1:]), dtype=np.float64)
    np.add.at(out, codes, X)
    out /= np.bincount(codes)[:, None, None]
    return out.astype(np.float32), ids


def load_job(
    epochs_path: str | Path, features_path: str | Path, average_train: bool = True
) -> EpochsJob:
    """Read the training and test epochs of a subject and the embeddings of their images.

    Raises
    ------
    BrainpipeInputError
        An image without an embedding, or a test image among the training epochs.
    """
    from brainpipe.storage import open_zarr

    ds = open_zarr(epochs_path)
    feats = open_zarr(features_path)
    emb = {s: i for i, s in enumerate(np.asarray(feats["stimulus"].values).astype(str))}
    F = np.asarray(feats["features"].values, dtype=np.float32)
    split = np.asarray(ds["split"].values).astype(str)
    stimuli = np.asarray(ds["stimulus"].values).astype(str)
    train, test = split == "train", split == "test"
    overlap = set(stimuli[train]) & set(stimuli[test])
    if overlap:
        raise BrainpipeInputError(
            str(epochs_path), "split", f"image {sorted(overlap)[0]!r} is in train and test"
        )
    X = ds["epochs"]
    X_train = np.asarray(X[np.flatnonzero(train)].values, dtype=np.float32)
    stim_train = stimuli[train]
    if average_train:
        X_train, stim_train = _average_by(X_train, stim_train)
    X_test, test_ids = _average_by(np.asarray(X[np.flatnonzero(test)].values), stimuli[test])

    def lookup(ids: np.ndarray) -> np.ndarray:
        missing = [s for s in ids if s not in emb]
        if missing:
            raise BrainpipeInputError(
                str(features_path), "stimulus", f"no embedding for image {missing[0]!r}"
            )
        return F[[emb[s] for s in ids]]

    return EpochsJob(
        X_train, stim_train, lookup(stim_train), X_test, test_ids, lookup(test_ids),
        np.asarray(ds["time"].values, dtype=np.float64),
    )  # fmt: skip


# ----------------------------------------------------------------------------- scores


def cosine_similarity(predicted: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Pearson correlation of every predicted row with every true row ``(n, n)``."""
    from brainpipe.models.evaluation import similarity_matrix

    return similarity_matrix(predicted, true)


def nway_hits(
    sim: np.ndarray, n_way: int, ks: tuple[int, ...] = (1, 5), n_draws: int = 20, seed: int = 0
) -> dict[str, np.ndarray]:
    """Per query: fraction of draws in which its own candidate ranks within the top k.

    ``sim[i, j]``: similarity of query ``i``'s prediction to candidate ``j``'s embedding;
    the own candidate is ``j = i``. Ties count against the query.
    """
    n = sim.shape[0]
    if n_way >= n:
        own = np.diag(sim)
        ahead = (sim >= own[:, None]).sum(axis=1) - 1
        return {f"top{k}": (ahead < k).astype(np.float64) for k in ks}
    if n_way < 2:
        raise BrainpipeInputError("config", "n_way", f"must be at least 2, got {n_way}")
    rng = np.random.default_rng(seed)
    hits = {f"top{k}": np.zeros(n) for k in ks}
    for i in range(n):
        others = np.delete(np.arange(n), i)
        for _ in range(n_draws):
            cand = rng.choice(others, size=n_way - 1, replace=False)
            ahead = int((sim[i, cand] >= sim[i, i]).sum())
            for k in ks:
                hits[f"top{k}"][i] += ahead < k
    return {key: v / n_draws for key, v in hits.items()}


def retrieval_scores(
    predicted: np.ndarray,
    true: np.ndarray,
    n_way: int = 200,
    n_boot: int = 1000,
    seed: int = 0,
    n_draws: int = 20,
) -> dict[str, float]:
    """Zero-shot top-1 / top-5 among ``n_way`` candidates, with chance and bootstrap CIs."""
    n = len(true)
    way = min(int(n_way), n)
    per = nway_hits(cosine_similarity(predicted, true), way, n_draws=n_draws, seed=seed)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    q = [(1 - CI_LEVEL) / 2 * 100, (1 + CI_LEVEL) / 2 * 100]
    out: dict[str, float] = {"n_way": way, "n_test_stimuli": n}
    for key, values in per.items():
        out[key] = float(values.mean())
        lo, hi = np.percentile(values[idx].mean(axis=1), q)
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = float(lo), float(hi)
    out["top1_chance"] = 1.0 / way
    out["top5_chance"] = min(5, way) / way
    return out


# ----------------------------------------------------------------------------- ridge


def _ridge_gcv(
    X: np.ndarray, Y: np.ndarray, alphas: list[float]
) -> tuple[np.ndarray, np.ndarray, float]:
    """Ridge with intercept, penalty by efficient leave-one-out (sklearn's RidgeCV)."""
    from sklearn.linear_model import RidgeCV

    model = RidgeCV(alphas=alphas, fit_intercept=True).fit(X, Y)
    return (
        model.coef_.T.astype(np.float32),
        model.intercept_.astype(np.float32),
        float(model.alpha_),
    )


def _standardise(X_train: np.ndarray, X_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu, sd = X_train.mean(0), X_train.std(0) + 1e-8
    return (X_train - mu) / sd, (X_test - mu) / sd


def time_resolved_accuracy(
    job: EpochsJob, alphas: list[float], n_way: int, window: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 zero-shot identification of the test images at every time point.

    Returns
    -------
    top1 : ndarray, (n_times,)
    alpha : ndarray, (n_times,) chosen penalties
    """
    n_t = job.X_train.shape[2]
    top1, chosen = np.zeros(n_t), np.zeros(n_t)
    for t in range(n_t):
        sl = slice(max(0, t - window // 2), min(n_t, t + window // 2 + 1))
        Xtr = job.X_train[:, :, sl].reshape(len(job.X_train), -1)
        Xte = job.X_test[:, :, sl].reshape(len(job.X_test), -1)
        Xtr, Xte = _standardise(Xtr, Xte)
        W, b, alpha = _ridge_gcv(Xtr, job.Y_train, alphas)
        sim = cosine_similarity(Xte @ W + b, job.Y_test)
        top1[t] = nway_hits(sim, min(n_way, len(sim)), ks=(1,), n_draws=5)["top1"].mean()
        chosen[t] = alpha
    return top1, chosen


@register_model(
    "timedecoder",
    kind="decoding",
    inputs="epochs",
    defaults={
        "alphas": [1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0],
        "window": 1,
        "average_train": True,
        "n_way": 200,
        "mem_mb": 4000,
    },
)
def timedecoder(job: EpochsJob, params: dict[str, Any]) -> FitResult:
    """Time-resolved ridge decoding; overall prediction from the whole epoch."""
    top1, alphas_t = time_resolved_accuracy(
        job, list(params["alphas"]), int(params["n_way"]), int(params["window"])
    )
    Xtr = job.X_train.reshape(len(job.X_train), -1)
    Xte = job.X_test.reshape(len(job.X_test), -1)
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-8
    W, b, alpha = _ridge_gcv((Xtr - mu) / sd, job.Y_train, list(params["alphas"]))
    predicted = ((Xte - mu) / sd) @ W + b
    return FitResult(
        weights={"coef": W, "intercept": b, "x_mean": mu.astype(np.float32),
                 "x_scale": sd.astype(np.float32), "alpha_over_time": alphas_t.astype(np.float32)},
        predicted=predicted.astype(np.float32),
        extra_predictions={},
        info={"alpha": str(alpha), "top1_over_time": ",".join(f"{v:.4f}" for v in top1)},
    )  # fmt: skip


# ----------------------------------------------------------------------------- NICE


def _nice_module(n_channels: int, n_times: int, dim: int, params: dict[str, Any]):
    import torch
    from torch import nn

    k = int(min(params["temporal_kernel"], max(1, n_times // 4)))
    after = n_times - k + 1
    pool = int(min(params["pool"], max(1, after // 2)))
    stride = int(max(1, min(params["pool_stride"], pool)))
    n_f = int(params["filters"])

    class Residual(nn.Module):
        def __init__(self, fn: nn.Module) -> None:
            super().__init__()
            self.fn = fn

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.fn(x)

    class Nice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.temporal_spatial = nn.Sequential(
                nn.Conv2d(1, n_f, (1, k)),
                nn.AvgPool2d((1, pool), (1, stride)),
                nn.BatchNorm2d(n_f),
                nn.ELU(),
                nn.Conv2d(n_f, n_f, (n_channels, 1)),
                nn.BatchNorm2d(n_f),
                nn.ELU(),
                nn.Dropout(float(params["dropout"])),
                nn.Conv2d(n_f, n_f, (1, 1)),
            )
            with torch.no_grad():
                flat = self.temporal_spatial(torch.zeros(2, 1, n_channels, n_times)).flatten(1)
            hidden = int(params["hidden"])
            self.project = nn.Sequential(
                nn.Linear(flat.shape[1], hidden),
                Residual(
                    nn.Sequential(
                        nn.GELU(), nn.Linear(hidden, hidden), nn.Dropout(float(params["dropout"]))
                    )
                ),
                nn.LayerNorm(hidden),
                nn.Linear(hidden, dim),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.project(self.temporal_spatial(x.unsqueeze(1)).flatten(1))

    return Nice()


@register_model(
    "nice",
    kind="decoding",
    torch=True,
    inputs="epochs",
    defaults={
        "epochs": 60,
        "batch_size": 256,
        "lr": 3e-4,
        "weight_decay": 1e-4,
        "temperature": 0.07,
        "filters": 40,
        "temporal_kernel": 25,
        "pool": 51,
        "pool_stride": 5,
        "hidden": 256,
        "dropout": 0.3,
        "average_train": True,
        "n_way": 200,
        "seed": 0,
        "mem_mb": 4000,
    },
)
def nice(job: EpochsJob, params: dict[str, Any]) -> FitResult:
    """Train the NICE-style encoder with the CLIP loss; embed the averaged test epochs."""
    import torch

    from brainpipe.backend import torch_device
    from brainpipe.models.torch_utils import (
        clip_loss,
        seed_everything,
        state_to_numpy,
        tensor,
    )

    gen = seed_everything(int(params["seed"]), int(params.get("threads") or 1))
    device = torch_device()
    scale = float(job.X_train.std()) or 1.0
    y_mu, y_sd = job.Y_train.mean(0), job.Y_train.std(0) + 1e-8
    X = tensor(job.X_train / scale, device)
    Y = tensor((job.Y_train - y_mu) / y_sd, device)
    model = _nice_module(X.shape[1], X.shape[2], Y.shape[1], params).to(device)
    opt = torch.optim.AdamW(
        model.parameters(), lr=float(params["lr"]), weight_decay=float(params["weight_decay"])
    )
    n = len(X)
    batch = int(min(params["batch_size"], n))
    stim_codes = np.unique(job.stim_train, return_inverse=True)[1]
    losses = []
    for _ in range(int(params["epochs"])):
        model.train()
        order = torch.randperm(n, generator=gen).numpy()
        total = 0.0
        for start in range(0, n - 1, batch):
            idx = order[start : start + batch]
            # one row per image in a batch: repeats of an image are not negatives of each other
            _, first = np.unique(stim_codes[idx], return_index=True)
            idx = idx[np.sort(first)]
            if len(idx) < 2:
                continue
            loss = clip_loss(model(X[idx]), Y[idx], float(params["temperature"]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / n)
    model.eval()
    with torch.no_grad():
        pred = model(tensor(job.X_test / scale, device)).cpu().numpy()
    predicted = pred * y_sd + y_mu  # back in the embedding's units (similarity is scale-free)
    weights = state_to_numpy(model)
    weights.update({"x_scale": np.float32([scale]), "y_mean": y_mu.astype(np.float32),
                    "y_scale": y_sd.astype(np.float32)})  # fmt: skip
    return FitResult(
        weights=weights,
        predicted=predicted.astype(np.float32),
        info={"device": str(device), "final_loss": f"{losses[-1]:.4f}" if losses else "nan"},
    )
