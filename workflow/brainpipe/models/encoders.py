"""Encoding models (stimulus features -> voxel responses).

- ``ridge``: per-voxel penalty by grouped CV, one decomposition shared across voxels and
  penalties, primal/dual by shape (:class:`brainpipe.ridge.RidgeCVEncoder`).
- ``bandedridge``: one penalty per feature space and voxel (himalaya ``BandedRidgeCV``'s
  random search over the simplex of band weights, solved in feature space by
  :mod:`brainpipe.banded_ridge`).
- ``attention``: a transformer-style readout whose per-voxel learned queries attend over
  the tokens (grid positions, fixed 2-D sinusoidal keys) of a spatial feature map, each
  voxel reading its attended values (what/where factorised), trained with torch.

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


#: Float64 ``(n_features, n_voxels)`` arrays a banded-ridge block holds besides its
#: betas: each fold's validation cross-products, all rows', and the search's temporaries.
BANDED_STATS_ARRAYS = 10


def banded_block_voxels(
    n_train: int, n_voxels: int, mem_mb: float, n_folds: int, n_features: int
) -> int:
    """Voxels per block so that one block's banded-ridge fit stays within ``mem_mb``.

    Per voxel: its float32 column of training betas, in units of
    :data:`RIDGE_BLOCK_MULTIPLIER` as ridge (the block, the fill mask, the read buffers),
    the float64 rows moved at a time (:data:`brainpipe.banded_ridge.ROW_CHUNK`) and the
    fold statistics (``n_folds`` validation cross-products and
    :data:`BANDED_STATS_ARRAYS` more ``n_features`` float64 columns). No array grows with
    the trials squared (the search stays in feature space); evened out over the blocks it
    takes, as :func:`ridge_block_voxels`.
    """
    from brainpipe.banded_ridge import ROW_CHUNK
    from brainpipe.compute import chunk_size_for

    per_voxel = (
        RIDGE_BLOCK_MULTIPLIER * n_train * 4
        + min(ROW_CHUNK, n_train) * 8
        + (n_folds + BANDED_STATS_ARRAYS) * n_features * 8
    )
    most = chunk_size_for(mem_mb, int(per_voxel), n_items=n_voxels, multiplier=1.0)
    n_blocks = -(-n_voxels // most)
    return -(-n_voxels // n_blocks)


def _banded_backend(name: str):
    """brainpipe's float64 backend ``name``; numpy with a warning when it is unavailable."""
    import warnings

    from brainpipe.backend import get_backend

    try:
        return get_backend(name, "float64")
    except ValueError as err:
        warnings.warn(f"bandedridge: {err}; using numpy", stacklevel=3)
        return get_backend("numpy", "float64")


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
    then concatenated. The search is himalaya's ``BandedRidgeCV`` (random search: ``n_iter``
    band weightings drawn by himalaya's sampler with ``seed``, each with every alpha,
    scored by himalaya's l2 loss on the same grouped folds as ``ridge``), solved in feature
    space by :func:`brainpipe.banded_ridge.banded_ridge_cv`: one pass over the betas gives
    every fold's Gram matrices and cross-products, then each weighting, fold and alpha
    costs ``O(n_features² n_voxels)`` instead of himalaya's hat matrix ``(n_validation,
    n_fit)`` per voxel (~2.4e15 flops for an NSD subject; tests/test_banded_ridge.py checks
    the result is himalaya's). Voxels are fitted in blocks of ``voxel_block`` (``None``:
    sized from the job's ``mem_mb`` by :func:`banded_block_voxels`), read from the store a
    block at a time, so the job's memory does not grow with the ROI; every block sees the
    same folds and the same weightings and each voxel picks its own, so the result is the
    single fit's. ``backend``: ``numpy``, ``torch`` (CPU), ``torch_cuda`` (a GPU node) or
    ``auto`` (:func:`brainpipe.backend.get_backend`); an unavailable one falls back to
    numpy with a warning.

    Weights: ``coef (n_features, n_voxels)``, ``intercept``, ``deltas (n_bands, n_voxels)``
    (log band penalties, ``log(gamma / alpha)``), ``x_mean``, ``x_scale``, ``band_sizes``.
    """
    from threadpoolctl import threadpool_limits

    from brainpipe.banded_ridge import banded_ridge_cv

    backend = _banded_backend(str(params["backend"]))
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
        data.n_train, n_vox, float(params["mem_mb"]), params["n_folds"], X.shape[1]
    )
    # BLAS threads = the job's threads: more (OpenBLAS's default, one per core) spin
    # against each other on a shared node and made the search ~25x slower here.
    with threadpool_limits(limits=max(1, int(params.get("threads") or 1))):
        for voxels, Y, _ in data.voxel_blocks(block):
            y_mean[voxels] = Y.mean(axis=0)
            fit = banded_ridge_cv(
                X, Y, band, folds, params["alphas"], int(params["n_iter"]),
                int(params["seed"]), backend, y_offset=y_mean[voxels],
            )  # fmt: skip
            coef[:, voxels] = fit["coef"]
            deltas[:, voxels] = fit["deltas"]
            predicted[:, voxels] = Xt @ coef[:, voxels] + y_mean[voxels]
            del Y, fit
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
            "backend": backend.name,
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


def grid_positional_encoding(n_tokens: int, pos_dim: int) -> tuple[np.ndarray, int]:
    """Fixed 2-D sinusoidal encoding of a token grid's positions.

    The last ``side²`` of ``n_tokens`` tokens are taken as a square grid, row-major (a
    ViT's patch tokens follow its class and register tokens; every position of a conv
    map); the leading ones have no position. Each grid position ``(x, y)`` (centres in
    fractions of the image side) is encoded per axis by ``sin(pi f a), cos(pi f a)`` for
    ``f = 1 .. pos_dim / 4``: a dot product with it is a smooth function of the position,
    and its softmax over the grid a bump whose centre and width one vector sets.

    Parameters
    ----------
    n_tokens, pos_dim : int
        Tokens of the map; encoding width (a multiple of 4).

    Returns
    -------
    encoding : ndarray of float32, shape (side², pos_dim)
    n_extra : int
        Leading tokens without a grid position.
    """
    if pos_dim % 4 or pos_dim < 4:
        raise ValueError(f"attention pos_dim must be a positive multiple of 4, got {pos_dim}")
    side = int(np.sqrt(n_tokens))
    freqs = np.pi * np.arange(1, pos_dim // 4 + 1)
    centres = (np.arange(side) + 0.5) / side
    yy, xx = np.meshgrid(centres, centres, indexing="ij")
    parts = []
    for axis in (xx.ravel(), yy.ravel()):
        angle = axis[:, None] * freqs[None, :]
        parts += [np.sin(angle), np.cos(angle)]
    return np.concatenate(parts, axis=1).astype(np.float32), n_tokens - side * side


#: Voxels whose attention and attended values are computed at once: the values of a chunk
#: (batch x chunk x n_queries x dim floats) are recomputed in the backward pass rather than
#: held, so a step's memory does not grow with the ROI (NSD: 15,000 voxels).
ATTENTION_VOXEL_CHUNK = 1024


def _read_voxels(queries, keys, values, weight):
    """Predictions of a chunk of voxels: softmax of ``sqrt(pos_dim) q.k`` over the tokens
    (position keys ``(tokens, pos_dim)``, the same for every image, or per image
    ``(n, tokens, pos_dim)``), the attended values, each voxel's linear readout of them."""
    import torch

    scale = float(np.sqrt(keys.shape[-1]))  # scaled, not divided: unit queries span pRFs
    if keys.ndim == 2:
        attn = torch.softmax(scale * queries @ keys.T, dim=-1)  # (voxels * queries, tokens)
        out = torch.matmul(attn, values)  # (n, voxels * queries, dim)
    else:
        attn = torch.softmax(scale * torch.einsum("qp,ntp->nqt", queries, keys), dim=-1)
        out = torch.einsum("nqt,ntd->nqd", attn, values)
    out = out.reshape(len(values), len(weight), -1)
    return torch.einsum("nvd,vd->nv", out, weight)


def _attention_module(n_tokens: int, n_channels: int, n_voxels: int, params: dict):
    import torch
    from torch import nn
    from torch.utils.checkpoint import checkpoint

    dim, n_queries = int(params["dim"]), int(params["n_queries"])
    pos_dim, content = int(params["pos_dim"]), bool(params["content_keys"])
    encoding, n_extra = grid_positional_encoding(n_tokens, pos_dim)

    class AttentionReadout(nn.Module):
        """Voxel queries attend over the tokens; each voxel reads its attended values.

        What and where are factorised: a value projection shared by all voxels (what;
        layer-normalised per token, dropout),
        ``n_queries`` learned queries per voxel whose attention over the tokens' fixed
        2-D sinusoidal position keys is that voxel's spatial pooling (where; the leading
        non-grid tokens have learned keys), and a per-voxel linear readout of its attended
        values. With ``content_keys`` the keys add a learned projection of each token, so
        where a voxel looks may depend on the image.
        """

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("grid", torch.from_numpy(encoding))
            self.extra = nn.Parameter(torch.zeros(n_extra, pos_dim))
            self.proj = nn.Linear(n_channels, dim)
            self.key = nn.Linear(n_channels, pos_dim) if content else None
            if self.key is not None:  # starts as the position-only readout
                nn.init.zeros_(self.key.weight)
                nn.init.zeros_(self.key.bias)
            self.queries = nn.Parameter(0.02 * torch.randn(n_voxels * n_queries, pos_dim))
            self.norm = nn.LayerNorm(dim)
            self.drop = nn.Dropout(float(params["dropout"]))
            self.weight = nn.Parameter(
                torch.randn(n_voxels, n_queries * dim) / np.sqrt(n_queries * dim)
            )
            self.bias = nn.Parameter(torch.zeros(n_voxels))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            keys = torch.cat([self.extra, self.grid])  # (tokens, pos_dim)
            if self.key is not None:
                keys = keys + self.key(x)  # (n, tokens, pos_dim)
            values = self.drop(self.norm(self.proj(x)))  # (n, tokens, dim)
            parts = []
            for v0 in range(0, n_voxels, ATTENTION_VOXEL_CHUNK):
                v1 = min(v0 + ATTENTION_VOXEL_CHUNK, n_voxels)
                args = (self.queries[v0 * n_queries : v1 * n_queries], keys, values)
                args += (self.weight[v0:v1],)
                if torch.is_grad_enabled():  # recomputed in backward, not held
                    parts.append(checkpoint(_read_voxels, *args, use_reentrant=False))
                else:
                    parts.append(_read_voxels(*args))
            return torch.cat(parts, dim=1) + self.bias

    return AttentionReadout()


@register_model(
    "attention",
    kind="encoding",
    torch=True,
    inputs="spatial",
    defaults={
        "n_queries": 1,
        "dim": 32,
        "pos_dim": 16,
        "content_keys": False,
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

    Each voxel has ``n_queries`` queries attending over the tokens, whose keys are a fixed
    2-D sinusoidal encoding of their grid position (:func:`grid_positional_encoding`;
    ``content_keys`` adds a learned projection of the token) and whose values a projection
    to ``dim`` shared by all voxels; a voxel's prediction is a linear readout of its
    attended values. Where a voxel looks is then ``pos_dim`` numbers per query, and a
    smooth bump over the image is what such a query makes, so a few hundred images
    locate a pRF (docs/models.md).

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
