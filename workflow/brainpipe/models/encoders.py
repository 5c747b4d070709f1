"""Encoding models (stimulus features -> voxel responses).

- ``ridge``: per-voxel penalty by grouped CV, one decomposition shared across voxels and
  penalties, primal/dual by shape (:class:`brainpipe.ridge.RidgeCVEncoder`).
- ``bandedridge``: one penalty per feature space and voxel (himalaya ``BandedRidgeCV``,
  random search over the simplex of band weights).
- ``attention``: a transformer-style readout whose per-ROI learned queries attend over
  the tokens (grid positions) of a spatial feature map, trained with torch.

Each model is ``fit(data: JobData, params) -> FitResult``; the targets are single-trial
training betas, the predictions are for the job's test stimuli.
"""

from __future__ import annotations

import numpy as np

from brainpipe.models.data import (
    ImageFeatures,
    JobData,
    minibatches,
    standardiser,
    zscore_in_place,
)
from brainpipe.models.registry import FitResult, register_model
from brainpipe.ridge import RidgeCVEncoder, make_group_folds

#: Quarter-decade steps: a per-voxel choice on a decade grid loses a few % of the ceiling
#: (measured in tests/test_models.py); the CV cost grows only with p x t per alpha.
RIDGE_ALPHAS = [round(float(a), 6) for a in np.logspace(-2, 6, 33)]


#: Peak memory of fitting one voxel block, in units of the block's training betas
#: (the block, its validation rows, the fill mask, the read buffers).
RIDGE_BLOCK_MULTIPLIER = 3.0


def ridge_block_voxels(n_train: int, n_voxels: int, mem_mb: float) -> int:
    """Voxels per block so that one block's fit stays within ``mem_mb``.

    Sized by :func:`brainpipe.compute.chunk_size_for` (one float32 column of
    ``n_train`` trials per voxel), then evened out over the blocks it takes.
    """
    from brainpipe.compute import chunk_size_for

    most = chunk_size_for(mem_mb, n_train * 4, n_items=n_voxels, multiplier=RIDGE_BLOCK_MULTIPLIER)
    n_blocks = -(-n_voxels // most)
    return -(-n_voxels // n_blocks)


@register_model(
    "ridge",
    kind="encoding",
    voxelwise=True,
    defaults={"alphas": RIDGE_ALPHAS, "n_folds": 5, "voxel_block": None},
)
def ridge(data: JobData, params: dict) -> FitResult:
    """Ridge with a per-voxel penalty chosen by CV (folds grouped by stimulus).

    Voxels are fitted independently, in blocks of ``voxel_block`` voxels (``None``:
    sized from the job's ``mem_mb`` by :func:`ridge_block_voxels`): a training job reads
    one block of its ROI's betas at a time, so its memory does not grow with the ROI
    (NSD's nsdgeneral included). Folds depend on the trials' stimuli alone, so every
    block is fitted on the same folds and the result is the one a single fit over all
    voxels gives.

    Weights: ``coef (n_features, n_voxels)``, ``intercept``, ``alpha`` (per voxel).
    """
    X, Xt = data.features_train[0], data.features_test[0]
    n_vox = data.n_voxels
    coef = np.empty((X.shape[1], n_vox), dtype=np.float32)
    intercept = np.empty(n_vox, dtype=np.float32)
    alpha = np.empty(n_vox, dtype=np.float32)
    predicted = np.empty((len(Xt), n_vox), dtype=np.float32)
    block = params.get("voxel_block") or ridge_block_voxels(
        data.n_train, n_vox, float(params["mem_mb"])
    )
    for voxels, Y, _ in data.voxel_blocks(block):
        model = RidgeCVEncoder(
            alphas=np.asarray(params["alphas"], float), n_folds=params["n_folds"]
        )
        model.fit(X, Y, groups=data.stimuli_train)
        coef[:, voxels] = model.coef_
        intercept[voxels] = model.intercept_
        alpha[voxels] = model.alpha_
        predicted[:, voxels] = model.predict(Xt)
        del Y, model
    return FitResult(
        weights={"coef": coef, "intercept": intercept, "alpha": alpha},
        predicted=predicted,
        info={"median_alpha": f"{np.median(alpha):g}", "voxel_block": str(block)},
    )


def banded_block_voxels(n_train: int, n_voxels: int, mem_mb: float, n_folds: int) -> int:
    """Voxels per block so that one block's banded-ridge fit stays within ``mem_mb``.

    himalaya's random search scores each alpha through the fold's hat matrix
    ``(n_validation, n_fit)`` (one alpha at a time here, ``n_alphas_batch`` 1): a fixed
    ``n_train**2 * (n_folds - 1) / n_folds**2`` float32 (467 MB for an NSD subject's 27,000
    training trials), whatever the block. The rest is per voxel, in units of the block's
    training betas: the block, its centred copy, each fold's training and validation rows,
    the validation predictions and their scores (5); evened out over the blocks it takes,
    as :func:`ridge_block_voxels`.
    """
    from brainpipe.compute import chunk_size_for

    hat_mb = n_train**2 * (n_folds - 1) / n_folds**2 * 4 / 1e6
    most = chunk_size_for(
        max(float(mem_mb) - hat_mb, float(mem_mb) / 4), n_train * 4, n_items=n_voxels,
        multiplier=5.0,
    )  # fmt: skip
    n_blocks = -(-n_voxels // most)
    return -(-n_voxels // n_blocks)


@register_model(
    "bandedridge",
    kind="encoding",
    inputs="bands",
    voxelwise=True,
    defaults={
        "bands": ["gabor", "caption"],
        "alphas": [0.1, 1, 10, 100, 1000, 10000, 100000],
        "n_iter": 20,
        "n_folds": 5,
        "backend": "numpy",
        "seed": 0,
        "voxel_block": None,
    },
)
def bandedridge(data: JobData, params: dict) -> FitResult:
    """Banded ridge: one penalty per feature space (band) and voxel, chosen by grouped CV.

    Features are centred and each band divided by its RMS column sd (training statistics),
    then concatenated;
    himalaya's ``BandedRidgeCV`` searches band weightings (``n_iter`` points of the
    simplex, each with every alpha) on the same grouped folds as ``ridge``. Voxels are
    fitted in blocks of ``voxel_block`` (``None``: sized from the job's ``mem_mb`` by
    :func:`banded_block_voxels`), read from the store a block at a time, so the job's
    memory does not grow with the ROI (NSD's nsdgeneral: 27,000 trials x 15,000 voxels,
    which himalaya would otherwise hold several times over, besides a hat matrix per
    alpha: 4.96 GB at 4,000 voxels); every block sees the same folds and the same sampled
    band weightings (``seed``) and each voxel picks its own, so the result is the single
    fit's. Time: himalaya scores through the hat matrix, ``n_iter x n_folds x n_alphas x
    2 n_validation n_fit n_voxels`` flops (~2.4e15 for an NSD subject: most of a day on
    a CPU; use ``backend: torch_cuda`` on a GPU node).
    ``backend`` is a himalaya backend name (``torch_cuda`` on a GPU node); it falls back to
    numpy with a warning when unavailable.

    Weights: ``coef (n_features, n_voxels)``, ``intercept``, ``deltas (n_bands, n_voxels)``
    (log band penalties), ``x_mean``, ``x_scale``, ``band_sizes``.
    """
    from himalaya.backend import set_backend
    from himalaya.ridge import BandedRidgeCV

    backend = set_backend(params["backend"], on_error="warn")
    blocks_train, blocks_test, groups = [], [], []
    for b, (tr, te) in enumerate(zip(data.features_train, data.features_test, strict=True)):
        blocks_train.append(tr)
        blocks_test.append(te)
        groups.append(np.full(tr.shape[1], b))
    X = np.concatenate(blocks_train, axis=1)
    Xt = np.concatenate(blocks_test, axis=1)
    # Centre, and scale each band by one number (its RMS column sd): z-scoring every
    # column would undo the PCA's variance ordering that plain ridge relies on.
    x_mean, col_sd = standardiser(X)
    band = np.concatenate(groups)
    x_scale = np.empty_like(col_sd)
    for b in np.unique(band):
        x_scale[band == b] = np.sqrt(np.mean(col_sd[band == b] ** 2))
    X, Xt = (X - x_mean) / x_scale, (Xt - x_mean) / x_scale
    X, Xt = X.astype(np.float32), Xt.astype(np.float32)
    folds = make_group_folds(len(X), params["n_folds"], data.stimuli_train, params["seed"])
    n_vox, n_bands = data.n_voxels, len(groups)
    coef = np.empty((X.shape[1], n_vox), dtype=np.float32)
    y_mean = np.empty(n_vox, dtype=np.float32)
    deltas = np.empty((n_bands, n_vox), dtype=np.float32)
    predicted = np.empty((len(Xt), n_vox), dtype=np.float32)
    block = params.get("voxel_block") or banded_block_voxels(
        data.n_train, n_vox, float(params["mem_mb"]), params["n_folds"]
    )
    for voxels, Y, _ in data.voxel_blocks(block):
        model = BandedRidgeCV(
            groups=band,
            solver_params={
                "alphas": np.asarray(params["alphas"], dtype=np.float64),
                "n_iter": int(params["n_iter"]),
                "n_alphas_batch": 1,  # one (n_validation, n_fit) hat matrix at a time
                "progress_bar": False,
            },
            cv=folds,
            fit_intercept=False,
            random_state=int(params["seed"]),
        )
        y_mean[voxels] = Y.mean(axis=0)
        model.fit(X, (Y - y_mean[voxels]).astype(np.float32))
        coef[:, voxels] = np.asarray(backend.to_numpy(model.coef_), dtype=np.float32)
        deltas[:, voxels] = np.asarray(backend.to_numpy(model.deltas_), dtype=np.float32)
        predicted[:, voxels] = Xt @ coef[:, voxels] + y_mean[voxels]
        del Y, model
    return FitResult(
        weights={
            "coef": coef,
            "intercept": y_mean,
            "deltas": deltas,
            "x_mean": x_mean,
            "x_scale": x_scale,
            "band_sizes": np.asarray([g.size for g in groups], dtype=np.float32),
        },
        predicted=predicted,
        info={
            "bands": ",".join(data.feature_names),
            "backend": str(backend.name),
            "voxel_block": str(block),
        },
    )


def attention_cache_mb(params: dict, n_train: int, n_voxels: int, batch_mb: float) -> float:
    """MB of image features a training job of ``attention`` can hold besides its other arrays.

    The job declares at least ``max(mem_mb, JOB_BASE_MB + 2 x its training betas)``
    (:meth:`~brainpipe.models.registry.ModelSpec.job_mem_mb`); it holds the betas once
    (z-scored in place) and up to four minibatches of features (the one read ahead, the
    one training, the gather's two buffers). What is left may hold the distinct training
    images in memory; beyond it they are read from the store per batch.
    """
    from brainpipe.models.registry import DATA_COPIES, JOB_BASE_MB

    betas_mb = n_train * n_voxels * 4 / 1e6
    declared = max(float(params["mem_mb"]), JOB_BASE_MB + DATA_COPIES * betas_mb)
    return max(0.0, declared - JOB_BASE_MB - betas_mb - 4 * batch_mb)


def _attention_module(n_tokens: int, n_channels: int, n_voxels: int, params: dict):
    import torch
    from torch import nn

    dim, n_queries = int(params["dim"]), int(params["n_queries"])

    class AttentionReadout(nn.Module):
        """Per-ROI queries attend over projected feature-map tokens; a linear readout to voxels."""

        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(n_channels, dim)
            self.pos = nn.Parameter(0.02 * torch.randn(n_tokens, dim))
            self.queries = nn.Parameter(0.02 * torch.randn(n_queries, dim))
            self.attn = nn.MultiheadAttention(dim, int(params["heads"]), batch_first=True)
            self.norm = nn.LayerNorm(dim)
            self.drop = nn.Dropout(float(params["dropout"]))
            self.readout = nn.Linear(n_queries * dim, n_voxels)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = self.proj(x) + self.pos
            q = self.queries.unsqueeze(0).expand(len(x), -1, -1)
            out, _ = self.attn(q, tokens, tokens, need_weights=False)
            return self.readout(self.drop(self.norm(out)).flatten(1))

    return AttentionReadout()


@register_model(
    "attention",
    kind="encoding",
    torch=True,
    inputs="spatial",
    defaults={
        "n_queries": 4,
        "dim": 32,
        "heads": 2,
        "dropout": 0.1,
        "epochs": 150,
        "lr": 3e-3,
        "weight_decay": 1e-2,
        "batch_size": 64,
        "seed": 0,
        "device": "auto",
        "max_steps": 3000,
    },
)
def attention(data: JobData, params: dict) -> FitResult:
    """Attention readout over a spatial feature map ``(n, n_tokens, n_channels)``.

    Trained with MSE on z-scored single-trial betas (training statistics), Adam with
    weight decay, a fixed number of epochs (no test data, no early stopping on it), capped
    at ``max_steps`` optimizer steps as the decoders' (an NSD subject's 27,000 training
    trials make an epoch ~420 steps of 64: the configured 150 epochs would take hours on a
    CPU; small datasets are unaffected).
    The features reach the module a minibatch at a time (:func:`minibatches`): a job's
    spatial store is read per image (:class:`~brainpipe.models.data.ImageFeatures`), held
    once per image when it fits the cache, else gathered from the store per batch (a DINOv2
    map of an NSD subject's training trials would be 21 GB per trial, 7.1 GB per image), so
    the job's memory is its betas plus a batch; the batches, and so the fit, are the ones a
    per-trial array gives. Test stimuli are predicted a batch at a time too.
    Weights: the module's state dict plus ``y_mean``, ``y_scale``.
    """
    import torch

    from brainpipe.backend import torch_device
    from brainpipe.models.torch_utils import (
        capped_epochs,
        seed_everything,
        state_to_numpy,
        tensor,
    )

    gen = seed_everything(int(params["seed"]), params.get("threads"))
    device = torch_device(params["device"])
    X, Xt = data.features_train[0], data.features_test[0]
    if X.ndim != 3:
        raise ValueError(f"attention needs spatial features (n, tokens, channels), got {X.shape}")
    y_mean, y_scale = standardiser(data.betas_train)
    if data.disposable:  # a training job's own copy: z-scored in place, not copied (NSD: 1.6 GB)
        Y = zscore_in_place(data.betas_train, y_mean, y_scale)
        data.disposable, data.betas_train = False, None
    else:
        Y = (data.betas_train - y_mean) / y_scale
    model = _attention_module(X.shape[1], X.shape[2], Y.shape[1], params).to(device)
    opt = torch.optim.AdamW(
        model.parameters(), lr=float(params["lr"]), weight_decay=float(params["weight_decay"])
    )
    Yd = tensor(Y, device)
    n, bs = len(X), int(params["batch_size"])
    if isinstance(X, ImageFeatures):  # hold images only within the job's declared memory
        X.cache_mb = min(
            X.cache_mb, attention_cache_mb(params, n, Y.shape[1], bs * X.row_bytes / 1e6)
        )
    if isinstance(Xt, ImageFeatures):  # each test image is read once: nothing to hold
        Xt.cache_mb = 0.0
    model.train()
    epochs = capped_epochs([n], params, int(params["epochs"]))
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        batches = [order[s : s + bs].numpy() for s in range(0, n, bs)]
        for idx, xb in zip(batches, minibatches(X, batches), strict=True):
            loss = torch.mean(
                (model(tensor(xb, device)) - Yd[torch.as_tensor(idx, device=device)]) ** 2
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    del Y, Yd  # the training betas (1.6 GB for NSD) are not needed to predict
    model.eval()
    test_batches = [np.arange(s, min(s + 256, len(Xt))) for s in range(0, len(Xt), 256)]
    with torch.no_grad():
        pred = np.concatenate(
            [model(tensor(xb, device)).cpu().numpy() for xb in minibatches(Xt, test_batches)]
        )
    return FitResult(
        weights={**state_to_numpy(model, "net."), "y_mean": y_mean, "y_scale": y_scale},
        predicted=(pred * y_scale + y_mean).astype(np.float32),
        info={
            "device": str(device),
            "final_train_loss": f"{float(loss.detach()):.4f}",
            "epochs_run": str(epochs),
            "features_read": (
                "per trial, in memory"
                if not isinstance(X, ImageFeatures)
                else "per image, " + ("in memory" if X.cached else "per batch from the store")
            ),
        },
    )
