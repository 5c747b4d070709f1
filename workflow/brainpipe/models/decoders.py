"""Decoding models (voxel responses -> stimulus embedding).

The embedding is any feature store's ``features(stimulus, feature)`` (the ``{features}``
wildcard). Voxels are z-scored and embedding dimensions standardised with training-trial
statistics; predictions are returned in the embedding's own units.

- ``ridgedecoder``: ridge from voxels to each embedding dimension, penalty per dimension
  by grouped CV.
- ``mlpdecoder``: an MLP trained with a contrastive (symmetric InfoNCE / CLIP) loss plus
  MSE, MindEye-style.
- ``sharedbackbone``: one linear adapter per subject into a shared MLP backbone
  (MindEye2 / "See Through Their Minds"), pretrained on the other subjects. A new adapter
  is fitted to the held-out subject with limited data (``finetune_sessions``): first in
  closed form (ridge from its voxels to the backbone latents of the trials' embeddings),
  then adapter and backbone (at a lower rate) are fine-tuned for a number of epochs chosen
  by grouped CV over the training stimuli (possibly none). The same job trains, on the
  same limited data, the per-subject baselines (the MLP from scratch and the ridge
  decoder) and returns their predictions as ``mlpdecoder`` and ``ridgedecoder``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from brainpipe.models.data import JobData, standardiser, zscore_in_place
from brainpipe.models.diskrows import DiskRows
from brainpipe.models.registry import FitResult, register_model
from brainpipe.ridge import RidgeCVEncoder

DECODER_ALPHAS = [1, 10, 100, 1000, 10000, 100000, 1000000]

_MLP_DEFAULTS = {
    "hidden": 256,
    "dropout": 0.3,
    "epochs": 200,
    "lr": 1e-3,
    "weight_decay": 1e-2,
    "batch_size": 64,
    "clip_weight": 1.0,
    "temperature": 0.1,
    "seed": 0,
    "device": "auto",
    "max_steps": 3000,
}


def _inputs(data: JobData) -> tuple[np.ndarray, np.ndarray]:
    """Voxels z-scored with training statistics: (train trials, averaged test responses).

    A training job's own data (``data.disposable``) is z-scored in place: at NSD scale
    the training trials are most of the job's memory, and a second copy would double it.
    """
    mean, sd = standardiser(data.betas_train)
    if not data.disposable:
        return (data.betas_train - mean) / sd, (data.betas_test - mean) / sd
    X = zscore_in_place(data.betas_train, mean, sd)
    Xt = zscore_in_place(data.betas_test, mean, sd)
    data.disposable = False  # z-scored now: a second call must not see it as raw betas
    data.betas_train = data.betas_test = None
    return X, Xt


#: Voxel components a ridge decoder keeps when its ROI has more voxels (see ridgedecoder).
DECODER_MAX_COMPONENTS = 1024


def _principal_axes(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The first ``k`` principal axes of the rows of ``X`` (centred), shape (n_cols, k).

    Randomized SVD (Halko et al. 2011, as scikit-learn's ``randomized_svd``) in the
    precision of ``X``: a few passes of ``n x p x k`` products instead of a ``p x p``
    eigendecomposition (minutes to hours at NSD's ~15,000 voxels on a CPU).
    """
    from sklearn.utils.extmath import randomized_svd

    _, _, vt = randomized_svd(X, k, n_oversamples=16, n_iter=3, random_state=seed)
    return np.ascontiguousarray(vt.T, dtype=X.dtype)


@register_model(
    "ridgedecoder",
    kind="decoding",
    defaults={"alphas": DECODER_ALPHAS, "n_folds": 5, "max_components": DECODER_MAX_COMPONENTS},
    data_copies=1.5,  # its z-scored betas once, projections and SVD work (benchmarks/scale.py)
)
def ridgedecoder(data: JobData, params: dict) -> FitResult:
    """Ridge from z-scored voxels to the embedding; one penalty per dimension by grouped CV.

    When the ROI has more than ``max_components`` voxels (NSD's nsdgeneral: ~15,000),
    the z-scored voxels are first projected on their first ``max_components`` principal
    axes over the training trials, and ridge runs on those: exact ridge over every voxel
    needs a voxels x voxels decomposition per fold. Ridge already shrinks the
    low-variance directions the projection drops. ``coef`` is stored back in voxel
    space. ROIs with fewer voxels are solved exactly as before.
    """
    X, Xt = _inputs(data)
    k = int(params.get("max_components") or 0)
    axes = None
    if 0 < k < X.shape[1]:
        axes = _principal_axes(X, k, int(params.get("seed", 0)))
        X, Xt = X @ axes, Xt @ axes  # the z-scored voxels are not needed again
    model = RidgeCVEncoder(alphas=np.asarray(params["alphas"], float), n_folds=params["n_folds"])
    model.fit(X, data.features_train[0], groups=data.stimuli_train)
    coef = model.coef_ if axes is None else axes @ model.coef_
    return FitResult(
        weights={
            "coef": coef.astype(np.float32),
            "intercept": model.intercept_.astype(np.float32),
            "alpha": model.alpha_.astype(np.float32),
        },
        predicted=model.predict(Xt).astype(np.float32),
        info={
            "median_alpha": f"{np.median(model.alpha_):g}",
            "voxel_components": str(X.shape[1]) if axes is not None else "all",
        },
    )


def _backbone(hidden: int, n_out: int, dropout: float):
    from torch import nn

    return nn.Sequential(
        nn.LayerNorm(hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden),
        nn.GELU(),
        nn.Linear(hidden, n_out),
    )


def _loss(pred, y, params: dict):
    """MSE + clip_weight * symmetric InfoNCE (torch tensors)."""
    import torch

    from brainpipe.models.torch_utils import clip_loss

    mse = torch.mean((pred - y) ** 2)
    return mse + float(params["clip_weight"]) * clip_loss(pred, y, float(params["temperature"]))


def _train_decoder(
    adapters: dict,
    backbone,
    batches: dict[str, tuple[np.ndarray, np.ndarray]],
    params: dict,
    epochs: int,
    backbone_lr_scale: float = 1.0,
    gen=None,
    device=None,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    y_standardiser: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[float, list[float]]:
    """Train adapters + backbone with MSE + clip_weight * InfoNCE; mini-batches per subject.

    Each epoch visits every subject's shuffled training trials in mini-batches (subjects
    interleaved); the epochs are capped at ``params["max_steps"]`` optimizer steps
    (:func:`brainpipe.models.torch_utils.capped_epochs`). With ``val`` (voxels, embedding
    of validation trials of the single subject), the validation loss is recorded before
    training and after every epoch.

    A subject's voxels may be :class:`~brainpipe.models.diskrows.DiskRows` (read a
    mini-batch at a time) instead of an array; with ``y_standardiser`` (mean, scale) the
    embedding rows are standardised a mini-batch at a time. Either way each step sees the
    same numbers as with the arrays in memory.

    Returns
    -------
    loss : float
        The last training loss.
    val_losses : list of float
        One validation loss before training and one per epoch run (empty without ``val``).
    """
    import torch

    from brainpipe.models.torch_utils import capped_epochs, tensor

    groups = [{"params": [p for a in adapters.values() for p in a.parameters()]}]
    groups.append({"params": list(backbone.parameters()), "lr": params["lr"] * backbone_lr_scale})
    opt = torch.optim.AdamW(
        groups, lr=float(params["lr"]), weight_decay=float(params["weight_decay"])
    )
    data = {
        s: (x if isinstance(x, DiskRows) else tensor(x, device), tensor(y, device))
        for s, (x, y) in batches.items()
    }
    y_shift = y_div = None
    if y_standardiser is not None:
        y_shift, y_div = (tensor(a, device) for a in y_standardiser)
    bs = int(params["batch_size"])
    loss = float("nan")
    val_losses: list[float] = []

    def validate() -> None:
        if val is not None:
            (adapter,) = adapters.values()
            adapter.eval()
            backbone.eval()
            with torch.no_grad():
                pred = backbone(adapter(tensor(val[0], device)))
                val_losses.append(_loss(pred, tensor(val[1], device), params).item())

    validate()
    for _ in range(capped_epochs([len(x) for x, _ in batches.values()], params, epochs)):
        for a in adapters.values():
            a.train()
        backbone.train()
        steps = []
        for s, (x, _) in data.items():
            order = torch.randperm(len(x), generator=gen)
            steps += [
                (s, order[i : i + bs]) for i in range(0, len(x), bs) if len(order[i : i + bs]) > 1
            ]
        for k in torch.randperm(len(steps), generator=gen).tolist():
            s, idx = steps[k]
            x, y = data[s]
            xb = tensor(x.take(idx.numpy()), device) if isinstance(x, DiskRows) else None
            idx = idx.to(device)
            xb = x[idx] if xb is None else xb
            yb = y[idx] if y_shift is None else (y[idx] - y_shift) / y_div
            step_loss = _loss(backbone(adapters[s](xb)), yb, params)
            opt.zero_grad()
            step_loss.backward()
            opt.step()
            loss = step_loss.item()
        validate()
    for a in adapters.values():
        a.eval()
    backbone.eval()
    return loss, val_losses


def _predict(adapter, backbone, X: np.ndarray, device) -> np.ndarray:
    """``backbone(adapter(X))`` (``adapter(X)`` when ``backbone`` is None), no gradients."""
    import torch

    from brainpipe.models.torch_utils import tensor

    with torch.no_grad():
        h = adapter(tensor(X, device)) if adapter is not None else tensor(X, device)
        return (backbone(h) if backbone is not None else h).cpu().numpy()


def _ridge_solutions(
    X: np.ndarray, T: np.ndarray, alphas: list[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Ridge from ``X`` to ``T`` (with intercept) for every penalty, through one SVD.

    Returns ``coef`` (n_alphas, n_features, n_targets) and ``intercept`` (n_alphas, n_targets).
    """
    x_mean, t_mean = X.mean(axis=0), T.mean(axis=0)
    U, sv, Vt = np.linalg.svd(np.asarray(X - x_mean, np.float64), full_matrices=False)
    UT = U.T @ np.asarray(T - t_mean, np.float64)
    coef = np.stack([Vt.T @ ((sv / (sv**2 + a))[:, None] * UT) for a in alphas])
    return coef, t_mean[None, :] - np.einsum("f,aft->at", x_mean, coef)


def _group_folds(groups: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    """Validation masks of ``n_folds`` folds; all trials of a group share a fold."""
    names = np.unique(groups)
    if len(names) < 2:
        return []
    order = np.random.default_rng(seed).permutation(len(names))
    fold_of = dict(zip(names[order], np.arange(len(names)) % n_folds, strict=True))
    codes = np.array([fold_of[g] for g in groups])
    return [codes == k for k in range(min(n_folds, len(names)))]


def _mlp_fit(data: JobData, params: dict, epochs: int | None = None):
    """Per-subject MLP decoder (adapter = first layer); returns (FitResult pieces)."""
    from torch import nn

    from brainpipe.backend import torch_device
    from brainpipe.models.torch_utils import seed_everything

    gen = seed_everything(int(params["seed"]), params.get("threads"))
    device = torch_device(params["device"])
    X, Xt = _inputs(data)
    y_mean, y_scale = standardiser(data.features_train[0])
    Y = (data.features_train[0] - y_mean) / y_scale
    adapter = nn.Linear(X.shape[1], int(params["hidden"])).to(device)
    backbone = _backbone(int(params["hidden"]), Y.shape[1], float(params["dropout"])).to(device)
    loss, _ = _train_decoder(
        {"s": adapter},
        backbone,
        {"s": (X, Y)},
        params,
        epochs or int(params["epochs"]),
        gen=gen,
        device=device,
    )
    pred = _predict(adapter, backbone, Xt, device) * y_scale + y_mean
    return adapter, backbone, pred.astype(np.float32), y_mean, y_scale, loss, device


@register_model("mlpdecoder", kind="decoding", torch=True, defaults=dict(_MLP_DEFAULTS))
def mlpdecoder(data: JobData, params: dict) -> FitResult:
    """MLP (linear -> LayerNorm/GELU -> linear -> GELU -> linear) with InfoNCE + MSE loss."""
    from brainpipe.models.torch_utils import capped_epochs, state_to_numpy

    adapter, backbone, pred, y_mean, y_scale, loss, device = _mlp_fit(data, params)
    return FitResult(
        weights={
            **state_to_numpy(adapter, "adapter."),
            **state_to_numpy(backbone, "backbone."),
            "y_mean": y_mean,
            "y_scale": y_scale,
        },
        predicted=pred,
        info={
            "device": str(device),
            "final_train_loss": f"{loss:.4f}",
            "epochs_run": str(capped_epochs([data.n_train], params, int(params["epochs"]))),
        },
    )


def _training_rows(data: JobData, scratch: str | os.PathLike | None) -> np.ndarray | DiskRows:
    """A pretraining subject's z-scored training voxels (:func:`_inputs`).

    Without ``scratch``: in memory (a copy, unless the data are ``disposable``). With a
    scratch folder: written there once (``sub-<subject>_<roi>.npy``) and read back a
    mini-batch at a time (:class:`~brainpipe.models.diskrows.DiskRows`); a later call for
    the same subject (the next held-out subject of a pretraining job) reuses the file.
    Betas this call reads itself (a lazy job's) are z-scored in place and dropped once
    written, so only one subject's training betas are ever in memory.
    """
    if scratch is None:
        return _inputs(data.load())[0]
    path = Path(scratch) / f"sub-{data.subject}_{data.roi}.npy"
    if not path.exists():
        if data.betas_train is None:  # read for this call alone: z-score in place
            data.load().disposable = True
        rows = DiskRows.write(path, _inputs(data)[0])
        if data.source is not None:  # lazy: back to the store until loaded again
            data.betas_train = data.betas_test = None
        return rows
    rows = DiskRows(path)
    if rows.shape != (data.n_train, data.n_voxels):
        raise ValueError(f"{path}: {rows.shape} rows, expected {(data.n_train, data.n_voxels)}")
    return rows


def pooled_standardiser(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and sd (sd 0 -> 1) of the rows of ``arrays`` stacked, without stacking them.

    Two passes in float64 (mean, then squared deviations), one array at a time: the
    numbers of :func:`~brainpipe.models.data.standardiser` on the concatenation, to
    float32 rounding, in memory that does not grow with the number of arrays.
    """
    n = sum(len(a) for a in arrays)
    mean = sum(a.sum(axis=0, dtype=np.float64) for a in arrays) / n
    var = sum(np.sum((a - mean) ** 2, axis=0) for a in arrays) / n
    sd = np.sqrt(var)
    return mean.astype(np.float32), np.where(sd > 1e-8, sd, 1.0).astype(np.float32)


def gram_ridge(
    pairs: Iterator[tuple[np.ndarray, np.ndarray]], alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """Ridge (with intercept, penalty ``alpha``) from ``X`` to ``T`` over blocks of rows.

    ``pairs`` yields blocks ``(X, T)`` of the same rows; only the cross-products
    ``X'X`` and ``X'T`` (float64) are kept, so memory does not grow with the rows. The
    solution is :func:`_ridge_solutions`'s (``(Xc'Xc + alpha I)^-1 Xc'Tc`` on centred
    data), to rounding.

    Returns ``coef`` (n_features, n_targets) and ``intercept`` (n_targets,).
    """
    n, sx, st, xx, xt = 0, 0.0, 0.0, 0.0, 0.0
    for X, T in pairs:
        X, T = np.asarray(X, np.float64), np.asarray(T, np.float64)
        n += len(X)
        sx, st = sx + X.sum(axis=0), st + T.sum(axis=0)
        xx, xt = xx + X.T @ X, xt + X.T @ T
    x_mean, t_mean = sx / n, st / n
    xx_c = xx - n * np.outer(x_mean, x_mean)
    xt_c = xt - n * np.outer(x_mean, t_mean)
    coef = np.linalg.solve(xx_c + alpha * np.eye(len(xx_c)), xt_c)
    return coef, t_mean - x_mean @ coef


def pretrain_shared_backbone(datasets: dict[str, JobData], params: dict) -> dict[str, np.ndarray]:
    """Pretrain the shared backbone (and one adapter per subject) on every subject given.

    Memory: with ``params["scratch_dir"]`` (the pretrain job's scratch folder), each
    subject's z-scored training voxels are written there once and read back a
    mini-batch at a time (:func:`_training_rows`), so the job holds one subject's
    training betas at most, whatever the number of subjects; the embedding rows stay in
    memory (n_train x n_dims each). Without it, every subject's voxels are in memory.
    The mini-batches, and so the weights, are the same either way.

    Parameters
    ----------
    datasets : dict of subject -> JobData
        Training trials of the pretraining subjects (test stimuli are never used); lazy
        ones (``load_job_data(..., lazy=True)``) are read here.
    params : dict
        The ``sharedbackbone`` block (plus ``scratch_dir``, optional).

    Returns
    -------
    weights : dict of str -> ndarray
        ``backbone.*`` (state dict), ``adapter.<subject>.*``, ``y_mean``, ``y_scale``
        (embedding standardisation pooled over the pretraining subjects' training trials)
        and ``latent.coef`` (n_dims, hidden), ``latent.intercept`` (hidden,): ridge
        (penalty ``latent_alpha``) from the standardised embedding to the adapters'
        outputs over the same trials, the backbone latent a new subject's adapter is
        first fitted to.
    """
    from torch import nn

    from brainpipe.backend import torch_device
    from brainpipe.models.torch_utils import seed_everything, state_to_numpy

    gen = seed_everything(int(params["seed"]), params.get("threads"))
    device = torch_device(params["device"])
    subjects = sorted(datasets)
    embeddings = {s: datasets[s].features_train[0] for s in subjects}
    y_mean, y_scale = pooled_standardiser([embeddings[s] for s in subjects])
    hidden = int(params["hidden"])
    adapters, batches = {}, {}
    for s in subjects:
        X = _training_rows(datasets[s], params.get("scratch_dir"))
        batches[s] = (X, embeddings[s])
        adapters[s] = nn.Linear(X.shape[1], hidden).to(device)
    backbone = _backbone(hidden, len(y_mean), float(params["dropout"])).to(device)
    _train_decoder(
        adapters,
        backbone,
        batches,
        params,
        int(params["epochs"]),
        gen=gen,
        device=device,
        y_standardiser=(y_mean, y_scale),
    )
    weights = {**state_to_numpy(backbone, "backbone."), "y_mean": y_mean, "y_scale": y_scale}
    for s, a in adapters.items():
        weights.update(state_to_numpy(a, f"adapter.{s}."))

    # The latent the backbone associates with an embedding: ridge from the standardised
    # embedding to the adapters' outputs, pooled over the pretraining subjects' trials
    # (a block of trials at a time).
    def latent_pairs() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        block = 4096
        for s in subjects:
            X, Y = batches[s]
            starts = range(0, len(X), block)
            if isinstance(X, DiskRows):
                blocks = X.blocks(block)
            else:
                blocks = (X[r0 : r0 + block] for r0 in starts)
            for r0, xb in zip(starts, blocks, strict=True):
                yb = (Y[r0 : r0 + block] - y_mean) / y_scale
                yield yb, _predict(adapters[s], None, xb, device)

    coef, intercept = gram_ridge(latent_pairs(), float(params["latent_alpha"]))
    weights["latent.coef"] = coef.astype(np.float32)
    weights["latent.intercept"] = intercept.astype(np.float32)
    return weights


def _closed_form_adapter(adapter, backbone, X, Y, groups, pretrained, params, device) -> float:
    """Fit ``adapter`` in closed form: ridge from voxels to the latents of the embeddings.

    The targets are the backbone latents of the trials' (standardised) embeddings,
    ``H = Y @ latent.coef + latent.intercept``. Ridge is linear in its targets, so the
    solution is the ridge to ``Y`` mapped through ``latent.*`` (one small solve). The
    penalty (one of ``adapter_alphas``) is chosen by grouped CV over the training stimuli
    on the squared decoding error through the frozen backbone.
    """
    import torch
    from threadpoolctl import threadpool_limits

    from brainpipe.models.torch_utils import tensor

    G, c = pretrained["latent.coef"].astype(np.float64), pretrained["latent.intercept"]
    alphas = [float(a) for a in params["adapter_alphas"]]
    err = np.zeros(len(alphas))
    with threadpool_limits(int(params.get("threads") or 1)):
        for val in _group_folds(groups, int(params["n_folds"]), int(params["seed"])):
            coef, icpt = _ridge_solutions(X[~val], Y[~val], alphas)
            for k in range(len(alphas)):
                latent = (X[val] @ coef[k] + icpt[k]) @ G + c
                err[k] += np.sum((_predict(None, backbone, latent, device) - Y[val]) ** 2)
        best = alphas[int(np.argmin(err))]
        coef, icpt = _ridge_solutions(X, Y, [best])
    with torch.no_grad():
        adapter.weight.copy_(tensor((coef[0] @ G).T, device))
        adapter.bias.copy_(tensor(icpt[0] @ G + c, device))
    return best


def _adapt(X, Y, groups, params, device, gen, epochs, val=None):
    """Closed-form adapter then ``epochs`` of fine-tuning on (X, Y).

    Returns (adapter, backbone, adapter penalty, last training loss, validation losses).
    """
    from torch import nn

    from brainpipe.models.torch_utils import load_numpy_state

    pretrained = params["pretrained"]
    backbone = _backbone(int(params["hidden"]), Y.shape[1], float(params["dropout"]))
    load_numpy_state(backbone, pretrained, "backbone.")
    backbone.to(device).eval()
    adapter = nn.Linear(X.shape[1], int(params["hidden"])).to(device)
    alpha = _closed_form_adapter(adapter, backbone, X, Y, groups, pretrained, params, device)
    loss, val_losses = _train_decoder(
        {"s": adapter},
        backbone,
        {"s": (X, Y)},
        params,
        epochs,
        backbone_lr_scale=float(params["backbone_lr_scale"]),
        gen=gen,
        device=device,
        val=val,
    )
    return adapter, backbone, alpha, loss, val_losses


@register_model(
    "sharedbackbone",
    kind="decoding",
    torch=True,
    pretrain=pretrain_shared_backbone,
    pretrain_subjects_in_memory=1,  # the others wait in the job's scratch folder
    reads_betas=True,  # the fine-tune reads its finetune_sessions' trials, not all
    defaults={
        **_MLP_DEFAULTS,
        "finetune_sessions": ["01"],
        "finetune_epochs": 50,
        "backbone_lr_scale": 0.1,
        "latent_alpha": 1.0,
        "adapter_alphas": DECODER_ALPHAS,
        "n_folds": 5,
        "baselines": True,
    },
)
def sharedbackbone(data: JobData, params: dict) -> FitResult:
    """Adapt the pretrained backbone to a held-out subject with limited data.

    ``params["pretrained"]`` holds :func:`pretrain_shared_backbone`'s weights (trained
    without this subject). Only the subject's training trials of ``finetune_sessions``
    are used, and a training job reads only those from the store
    (:meth:`~brainpipe.models.data.JobData.restrict_sessions` of its lazy data: an NSD
    session's 675 training trials, not all 27,000): a new adapter is first fitted in
    closed form (ridge from the voxels to the backbone's latents of the trials'
    embeddings, penalty by grouped CV through the frozen backbone), then adapter and
    backbone are fine-tuned (backbone at ``lr * backbone_lr_scale``) for a number of
    epochs (at most ``finetune_epochs``, maybe none) chosen by grouped CV over the
    training stimuli. With ``baselines``, the
    per-subject MLP (from scratch) and the ridge decoder are trained on the same trials
    and returned as extra predictions ``mlpdecoder`` and ``ridgedecoder``.
    """
    from brainpipe.backend import torch_device
    from brainpipe.models.torch_utils import seed_everything, state_to_numpy

    pretrained = params["pretrained"]
    limited = data.restrict_sessions(list(params["finetune_sessions"]))
    gen = seed_everything(int(params["seed"]), params.get("threads"))
    device = torch_device(params["device"])
    y_mean, y_scale = pretrained["y_mean"], pretrained["y_scale"]
    X, Xt = _inputs(limited)
    Y = (limited.features_train[0] - y_mean) / y_scale
    groups = limited.stimuli_train
    max_epochs = int(params["finetune_epochs"])
    curve = np.zeros(max_epochs + 1)
    if max_epochs > 0:
        for val in _group_folds(groups, int(params["n_folds"]), int(params["seed"])):
            losses = _adapt(
                X[~val], Y[~val], groups[~val], params, device, gen, max_epochs, (X[val], Y[val])
            )[4]
            # a max_steps cap ends a fold's curve early: its last loss holds after that
            curve += np.pad(losses, (0, len(curve) - len(losses)), mode="edge")
    epochs = int(np.argmin(curve))
    adapter, backbone, alpha, loss, _ = _adapt(X, Y, groups, params, device, gen, epochs)
    pred = _predict(adapter, backbone, Xt, device) * y_scale + y_mean
    extra = {}
    if params["baselines"]:
        extra["mlpdecoder"] = _mlp_fit(limited, params)[2]
        ridge_params = {
            "alphas": DECODER_ALPHAS,
            "n_folds": min(5, len(set(limited.stimuli_train))),
        }
        extra["ridgedecoder"] = ridgedecoder(limited, ridge_params).predicted
    return FitResult(
        weights={
            **state_to_numpy(adapter, "adapter."),
            **state_to_numpy(backbone, "backbone."),
            "y_mean": y_mean,
            "y_scale": y_scale,
        },
        predicted=pred.astype(np.float32),
        extra_predictions=extra,
        info={
            "device": str(device),
            "final_train_loss": f"{loss:.4f}",
            "finetune_sessions": ",".join(map(str, params["finetune_sessions"])),
            "n_finetune_trials": str(len(X)),
            "n_train_trials": str(len(X)),  # what this subject's model (and baselines) saw
            "adapter_alpha": f"{alpha:g}",
            "finetune_epochs_chosen": str(epochs),
        },
    )
