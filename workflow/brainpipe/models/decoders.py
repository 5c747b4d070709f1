"""Decoding models (voxel responses -> stimulus embedding).

The embedding is any feature store's ``features(stimulus, feature)`` (the ``{features}``
wildcard). Voxels are z-scored and embedding dimensions standardised with training-trial
statistics; predictions are returned in the embedding's own units.

- ``ridgedecoder``: ridge from voxels to each embedding dimension, penalty per dimension
  by grouped CV.
- ``mlpdecoder``: an MLP trained with a contrastive (symmetric InfoNCE / CLIP) loss plus
  MSE, MindEye-style.
- ``sharedbackbone``: one linear adapter per subject into a shared MLP backbone
  (MindEye2 / "See Through Their Minds"), pretrained on the other subjects, then a new
  adapter is fitted to the held-out subject with limited data (``finetune_sessions``)
  while the backbone is fine-tuned at a lower rate. The same job trains, on the same
  limited data, the per-subject baselines (the MLP from scratch and the ridge decoder)
  and returns their predictions as ``scratch`` and ``ridge``.
"""

from __future__ import annotations

import numpy as np

from brainpipe.models.data import JobData, standardiser
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
}


def _inputs(data: JobData) -> tuple[np.ndarray, np.ndarray]:
    """Voxels z-scored with training statistics: (train trials, averaged test responses)."""
    mean, sd = standardiser(data.betas_train)
    return (data.betas_train - mean) / sd, (data.betas_test - mean) / sd


@register_model("ridgedecoder", kind="decoding", defaults={"alphas": DECODER_ALPHAS, "n_folds": 5})
def ridgedecoder(data: JobData, params: dict) -> FitResult:
    """Ridge from z-scored voxels to the embedding; one penalty per dimension by grouped CV."""
    X, Xt = _inputs(data)
    model = RidgeCVEncoder(alphas=np.asarray(params["alphas"], float), n_folds=params["n_folds"])
    model.fit(X, data.features_train[0], groups=data.stimuli_train)
    return FitResult(
        weights={
            "coef": model.coef_.astype(np.float32),
            "intercept": model.intercept_.astype(np.float32),
            "alpha": model.alpha_.astype(np.float32),
        },
        predicted=model.predict(Xt).astype(np.float32),
        info={"median_alpha": f"{np.median(model.alpha_):g}"},
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


def _train_decoder(
    adapters: dict,
    backbone,
    batches: dict[str, tuple[np.ndarray, np.ndarray]],
    params: dict,
    epochs: int,
    backbone_lr_scale: float = 1.0,
    gen=None,
    device=None,
) -> float:
    """Train adapters + backbone with MSE + clip_weight * InfoNCE; mini-batches per subject.

    Each epoch visits every subject's shuffled training trials in mini-batches (subjects
    interleaved); returns the last loss.
    """
    import torch

    from brainpipe.models.torch_utils import clip_loss, tensor

    groups = [{"params": [p for a in adapters.values() for p in a.parameters()]}]
    groups.append({"params": list(backbone.parameters()), "lr": params["lr"] * backbone_lr_scale})
    opt = torch.optim.AdamW(
        groups, lr=float(params["lr"]), weight_decay=float(params["weight_decay"])
    )
    data = {s: (tensor(x, device), tensor(y, device)) for s, (x, y) in batches.items()}
    bs = int(params["batch_size"])
    loss = torch.tensor(0.0)
    for a in adapters.values():
        a.train()
    backbone.train()
    for _ in range(epochs):
        steps = []
        for s, (x, _) in data.items():
            order = torch.randperm(len(x), generator=gen)
            steps += [
                (s, order[i : i + bs]) for i in range(0, len(x), bs) if len(order[i : i + bs]) > 1
            ]
        for k in torch.randperm(len(steps), generator=gen).tolist():
            s, idx = steps[k]
            x, y = data[s]
            idx = idx.to(device)
            pred = backbone(adapters[s](x[idx]))
            loss = torch.mean((pred - y[idx]) ** 2) + float(params["clip_weight"]) * clip_loss(
                pred, y[idx], float(params["temperature"])
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    for a in adapters.values():
        a.eval()
    backbone.eval()
    return float(loss)


def _predict(adapter, backbone, X: np.ndarray, device) -> np.ndarray:
    import torch

    from brainpipe.models.torch_utils import tensor

    with torch.no_grad():
        return backbone(adapter(tensor(X, device))).cpu().numpy()


def _mlp_fit(data: JobData, params: dict, epochs: int | None = None):
    """Per-subject MLP decoder (adapter = first layer); returns (FitResult pieces)."""
    from torch import nn

    from brainpipe.models.torch_utils import get_device, seed_everything

    gen = seed_everything(int(params["seed"]), params.get("threads"))
    device = get_device(params["device"])
    X, Xt = _inputs(data)
    y_mean, y_scale = standardiser(data.features_train[0])
    Y = (data.features_train[0] - y_mean) / y_scale
    adapter = nn.Linear(X.shape[1], int(params["hidden"])).to(device)
    backbone = _backbone(int(params["hidden"]), Y.shape[1], float(params["dropout"])).to(device)
    loss = _train_decoder(
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
    from brainpipe.models.torch_utils import state_to_numpy

    adapter, backbone, pred, y_mean, y_scale, loss, device = _mlp_fit(data, params)
    return FitResult(
        weights={
            **state_to_numpy(adapter, "adapter."),
            **state_to_numpy(backbone, "backbone."),
            "y_mean": y_mean,
            "y_scale": y_scale,
        },
        predicted=pred,
        info={"device": str(device), "final_train_loss": f"{loss:.4f}"},
    )


def pretrain_shared_backbone(datasets: dict[str, JobData], params: dict) -> dict[str, np.ndarray]:
    """Pretrain the shared backbone (and one adapter per subject) on every subject given.

    Parameters
    ----------
    datasets : dict of subject -> JobData
        Training trials of the pretraining subjects (test stimuli are never used).
    params : dict
        The ``sharedbackbone`` block.

    Returns
    -------
    weights : dict of str -> ndarray
        ``backbone.*`` (state dict), ``adapter.<subject>.*``, ``y_mean``, ``y_scale``
        (embedding standardisation pooled over the pretraining subjects' training trials).
    """
    from torch import nn

    from brainpipe.models.torch_utils import get_device, seed_everything, state_to_numpy

    gen = seed_everything(int(params["seed"]), params.get("threads"))
    device = get_device(params["device"])
    y_mean, y_scale = standardiser(np.concatenate([d.features_train[0] for d in datasets.values()]))
    hidden = int(params["hidden"])
    adapters, batches = {}, {}
    for s, d in sorted(datasets.items()):
        X, _ = _inputs(d)
        batches[s] = (X, (d.features_train[0] - y_mean) / y_scale)
        adapters[s] = nn.Linear(X.shape[1], hidden).to(device)
    backbone = _backbone(hidden, len(y_mean), float(params["dropout"])).to(device)
    _train_decoder(
        adapters, backbone, batches, params, int(params["epochs"]), gen=gen, device=device
    )
    weights = {**state_to_numpy(backbone, "backbone."), "y_mean": y_mean, "y_scale": y_scale}
    for s, a in adapters.items():
        weights.update(state_to_numpy(a, f"adapter.{s}."))
    return weights


@register_model(
    "sharedbackbone",
    kind="decoding",
    torch=True,
    pretrain=pretrain_shared_backbone,
    defaults={
        **_MLP_DEFAULTS,
        "finetune_sessions": ["01"],
        "finetune_epochs": 200,
        "backbone_lr_scale": 0.1,
        "baselines": True,
    },
)
def sharedbackbone(data: JobData, params: dict) -> FitResult:
    """Fine-tune the pretrained backbone to a held-out subject with limited data.

    ``params["pretrained"]`` holds :func:`pretrain_shared_backbone`'s weights (trained
    without this subject). A new adapter is fitted on the subject's training trials of
    ``finetune_sessions`` only; the backbone is updated at ``lr * backbone_lr_scale``.
    With ``baselines``, the per-subject MLP (from scratch) and the ridge decoder are
    trained on the same trials and returned as extra predictions ``scratch`` and ``ridge``.
    """
    from torch import nn

    from brainpipe.models.torch_utils import (
        get_device,
        load_numpy_state,
        seed_everything,
        state_to_numpy,
    )

    pretrained = params["pretrained"]
    limited = data.restrict_sessions(list(params["finetune_sessions"]))
    gen = seed_everything(int(params["seed"]), params.get("threads"))
    device = get_device(params["device"])
    y_mean, y_scale = pretrained["y_mean"], pretrained["y_scale"]
    hidden = int(params["hidden"])
    backbone = _backbone(hidden, len(y_mean), float(params["dropout"]))
    load_numpy_state(backbone, pretrained, "backbone.")
    backbone.to(device)
    X, Xt = _inputs(limited)
    Y = (limited.features_train[0] - y_mean) / y_scale
    adapter = nn.Linear(X.shape[1], hidden).to(device)
    loss = _train_decoder(
        {"s": adapter},
        backbone,
        {"s": (X, Y)},
        params,
        int(params["finetune_epochs"]),
        backbone_lr_scale=float(params["backbone_lr_scale"]),
        gen=gen,
        device=device,
    )
    pred = _predict(adapter, backbone, Xt, device) * y_scale + y_mean
    extra = {}
    if params["baselines"]:
        extra["scratch"] = _mlp_fit(limited, params)[2]
        ridge_params = {
            "alphas": DECODER_ALPHAS,
            "n_folds": min(5, len(set(limited.stimuli_train))),
        }
        extra["ridge"] = ridgedecoder(limited, ridge_params).predicted
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
        },
    )
