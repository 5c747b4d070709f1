"""In-context encoding (BraInCoRL-style): a voxel's encoder from a support set, no fitting.

A transformer is meta-trained across the voxels of the training subjects: it reads a
*support set* of ``(stimulus embedding, response)`` pairs of one voxel and writes the
parameters of that voxel's linear encoder (a weight per embedding dimension and a bias),
which then predict the voxel's response to any stimulus. A new subject needs no per-voxel
optimisation: its voxels' support sets go through the network once (BraInCoRL, Yu et al.
2025, "Meta-learning an in-context transformer model of human higher visual cortex").

Design (ours, at the scale of this pipeline):

- support tokens: ``Linear([x_i, y_i, y_i * x_i])`` of the standardised embedding ``x_i``
  and the voxel's response ``y_i`` z-scored over its support set; the product term lets
  one attention layer pool the cross-covariance ``X^T y`` that a linear encoder needs;
- no positional encoding (the support set is a set), a learned readout token that also
  carries ``log k``, a ``TransformerEncoder``; the readout token's output is mapped to
  ``(w, b)`` and added to a learned linear map (the *prior*, initialised to the identity)
  of the pooled ``X^T y / k``, so an untrained network starts as the least-squares
  estimate for whitened embeddings and meta-training learns the shrinkage;
- meta-training episodes: a batch of voxels of one training subject, a support size drawn
  log-uniformly from ``[min_support, max_support]``, support and query trials drawn
  from that subject's training trials (distinct stimuli), loss = MSE on the query trials;
- prediction for a held-out subject: its support set is a subset of its *training*
  trials (test stimuli never enter), responses are z-scored with the support's mean and
  sd and mapped back.

The model ``incontext`` is cross-subject (:func:`pretrain` meta-trains leave-one-subject-
out). Its job evaluates one support set per size in ``support_sizes`` and fits ridge on
each of the same support sets: predictions ``incontext<k>`` and ``ridge<k>`` are scored
next to the model's own (the largest size).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from brainpipe.models.data import JobData, standardiser
from brainpipe.models.registry import FitResult, register_model
from brainpipe.ridge import RidgeCVEncoder

log = logging.getLogger(__name__)

INCONTEXT_DEFAULTS = {
    "support_sizes": [50, 100, 300, 1000],
    "dim": 64,
    "layers": 2,
    "heads": 4,
    "steps": 600,
    "voxels_per_step": 32,
    "min_support": 8,
    "max_support": 1000,
    "n_query": 64,
    "lr": 2e-3,
    "weight_decay": 1e-4,
    "voxel_chunk": 64,
    "ridge_alphas": [round(float(a), 6) for a in np.logspace(-2, 6, 17)],
    "ridge_folds": 5,
    "seed": 0,
    "device": "auto",
}


def _network(n_features: int, params: dict):
    import torch
    from torch import nn

    dim = int(params["dim"])

    class InContextEncoder(nn.Module):
        """Support set of one voxel -> (weights, bias) of its linear encoder."""

        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(2 * n_features + 1, dim)
            self.readout = nn.Parameter(0.02 * torch.randn(1, 1, dim))
            layer = nn.TransformerEncoderLayer(
                dim, int(params["heads"]), 2 * dim, dropout=0.0, batch_first=True
            )
            self.encoder = nn.TransformerEncoder(
                layer, int(params["layers"]), enable_nested_tensor=False
            )
            self.size = nn.Linear(1, dim)
            # Per voxel: a log scale of the prior precision, and a correction to (w, b).
            self.head = nn.Linear(dim, n_features + 2)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
            # The meta-learned Gaussian prior of the weights, as a precision relative to the
            # noise: Lambda = A A^T + diag(softplus(d)), starting at the identity.
            self.prior_factor = nn.Parameter(torch.zeros(n_features, n_features))
            self.prior_diag = nn.Parameter(torch.full((n_features,), math.log(math.e - 1)))

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """x: (k, p) embeddings of the support; y: (voxels, k) z-scored responses.

            Returns the weights (voxels, p) on the support-centred embedding and the bias.
            """
            k, p = x.shape
            xc = x - x.mean(dim=0)
            xb = xc.expand(len(y), -1, -1)
            yy = y.unsqueeze(-1)
            tokens = self.embed(torch.cat([xb, yy, yy * xb], dim=-1))
            size = torch.full((len(y), 1, 1), math.log(k), device=x.device)
            readout = self.readout.expand(len(y), -1, -1) + self.size(size)
            out = self.head(self.encoder(torch.cat([readout, tokens], dim=1))[:, 0])
            precision = self.prior_factor @ self.prior_factor.T + torch.diag(
                nn.functional.softplus(self.prior_diag)
            )
            gram = xc.T @ xc / k
            scale = torch.exp(out[:, 0]).view(-1, 1, 1) / k
            w = torch.linalg.solve(gram + scale * precision, (y @ xc / k).unsqueeze(-1))
            return w.squeeze(-1) + out[:, 1:-1], out[:, -1]

    return InContextEncoder()


def _zscore_support(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Responses (k, voxels) z-scored per voxel over the support set; returns (z, mean, sd)."""
    mean = y.mean(axis=0)
    sd = y.std(axis=0)
    sd = np.where(sd > 1e-8, sd, 1.0)
    return (y - mean) / sd, mean, sd


def _episode(
    data: JobData,
    x: np.ndarray,
    rng: np.random.Generator,
    params: dict,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One meta-training episode of one subject: support and query arrays, z-scored."""
    n = len(x)
    n_query = min(int(params["n_query"]), n // 2)
    hi = max(min(int(params["max_support"]), n - n_query), 2)
    lo = min(max(int(params["min_support"]), 2), hi)
    k = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
    vox = rng.choice(data.n_voxels, size=min(int(params["voxels_per_step"]), data.n_voxels))
    order = rng.permutation(n)
    sup, qry = order[:k], order[k : k + n_query]
    ys, mean, sd = _zscore_support(data.betas_train[np.ix_(sup, vox)])
    yq = (data.betas_train[np.ix_(qry, vox)] - mean) / sd
    return x[sup], ys.T, x[qry], yq.T


def meta_train(datasets: dict[str, JobData], params: dict) -> dict[str, np.ndarray]:
    """Meta-train the in-context encoder on the training subjects' voxels.

    Parameters
    ----------
    datasets : dict of subject -> JobData
        The training subjects (the held-out subject is not among them); only their
        training trials are read.
    params : dict
        The model's parameters (:data:`INCONTEXT_DEFAULTS`).

    Returns
    -------
    weights : dict of str -> ndarray
        The network's state (``net.*``) and the embedding standardiser ``x_mean``,
        ``x_scale`` (training trials of the training subjects).
    """
    import torch

    from brainpipe.backend import torch_device
    from brainpipe.models.torch_utils import seed_everything, state_to_numpy, tensor

    gen = seed_everything(int(params["seed"]), params.get("threads"))
    device = torch_device(params["device"])
    subjects = sorted(datasets)
    for s in subjects:  # a pretrain job's data are lazy: every subject's betas are read here
        datasets[s].load()
    x_all = np.concatenate([datasets[s].features_train[0] for s in subjects])
    # Centre, and scale by one number (the RMS column sd): z-scoring every column would
    # undo the PCA's variance ordering, the prior that ridge gets from raw PCA features.
    x_mean, col_sd = standardiser(x_all)
    x_scale = np.full_like(col_sd, np.sqrt(np.mean(col_sd**2)))
    xs = {s: (datasets[s].features_train[0] - x_mean) / x_scale for s in subjects}
    net = _network(x_all.shape[1], params).to(device)
    opt = torch.optim.AdamW(
        net.parameters(), lr=float(params["lr"]), weight_decay=float(params["weight_decay"])
    )
    steps = int(params["steps"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, float(params["lr"]), total_steps=steps)
    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    net.train()
    loss = torch.zeros(())
    for _ in range(steps):
        s = subjects[int(rng.integers(len(subjects)))]
        xsup, ysup, xq, yq = (tensor(a, device) for a in _episode(datasets[s], xs[s], rng, params))
        w, b = net(xsup, ysup)
        pred = (xq - xsup.mean(dim=0)) @ w.T + b  # (n_query, voxels)
        loss = torch.mean((pred - yq.T) ** 2)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
    log.info("meta-trained on %s: final query loss %.3f", ",".join(subjects), loss.item())
    return {**state_to_numpy(net, "net."), "x_mean": x_mean, "x_scale": x_scale}


def predict_in_context(
    weights: dict[str, np.ndarray],
    params: dict,
    x_support: np.ndarray,
    y_support: np.ndarray,
    x_query: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every voxel's encoder from its support set, and its predictions for the queries.

    Parameters
    ----------
    weights : dict
        From :func:`meta_train`.
    x_support : ndarray, shape (k, p)
        Embeddings of the support stimuli (raw feature units).
    y_support : ndarray, shape (k, n_voxels)
        The voxels' responses to them.
    x_query : ndarray, shape (n, p)

    Returns
    -------
    predicted : ndarray of float32, shape (n, n_voxels)
    coef : ndarray of float32, shape (p, n_voxels)
        Per-voxel weights on the raw embedding (``predicted = x_query @ coef + intercept``).
    intercept : ndarray of float32, shape (n_voxels,)
    """
    import torch

    from brainpipe.backend import torch_device
    from brainpipe.models.torch_utils import load_numpy_state, tensor

    device = torch_device(params["device"])
    x_mean, x_scale = weights["x_mean"], weights["x_scale"]
    net = _network(len(x_mean), params).to(device)
    load_numpy_state(net, weights, "net.")
    net.eval()
    xs = tensor((x_support - x_mean) / x_scale, device)
    ys, mean, sd = _zscore_support(np.asarray(y_support, np.float64))
    coef, bias = [], []
    chunk = int(params["voxel_chunk"])
    with torch.no_grad():
        for start in range(0, ys.shape[1], chunk):
            y = tensor(ys[:, start : start + chunk].T, device)
            w, b = net(xs, y)
            coef.append(w.cpu().numpy().T)
            bias.append(b.cpu().numpy())
    coef_z, bias_z = np.concatenate(coef, axis=1), np.concatenate(bias)
    # Back to raw embedding and response units: y = (x - centre) / x_scale @ w * sd + ...
    centre = np.asarray(x_support, np.float64).mean(axis=0)
    coef_y = coef_z * sd / x_scale[:, None]
    intercept = bias_z * sd + mean - centre @ coef_y
    predicted = np.asarray(x_query, np.float64) @ coef_y + intercept
    return predicted.astype(np.float32), coef_y.astype(np.float32), intercept.astype(np.float32)


def support_trials(data: JobData, size: int, seed: int) -> np.ndarray:
    """Indices of ``size`` training trials of distinct stimuli (all trials if fewer).

    Support sets are nested: the set of size ``k`` is the first ``k`` of one fixed random
    order, so a larger support set contains every smaller one.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.stimuli_train))
    _, first = np.unique(data.stimuli_train[order], return_index=True)
    distinct = order[np.sort(first)]
    later = np.ones(len(order), bool)
    later[distinct] = False
    ranked = np.concatenate([distinct, order[later[order]]])
    return ranked[: min(size, len(ranked))]


def ridge_on_support(
    data: JobData, idx: np.ndarray, params: dict
) -> tuple[np.ndarray, RidgeCVEncoder]:
    """Ridge with a per-voxel penalty chosen by grouped CV on the support trials ``idx``."""
    X, Y, groups = data.features_train[0][idx], data.betas_train[idx], data.stimuli_train[idx]
    folds = max(2, min(int(params["ridge_folds"]), len(np.unique(groups))))
    model = RidgeCVEncoder(alphas=np.asarray(params["ridge_alphas"], float), n_folds=folds)
    model.fit(X, Y, groups=groups)
    return model.predict(data.features_test[0]).astype(np.float32), model


def support_sizes(data: JobData, params: dict) -> list[int]:
    """The configured support sizes that the subject's training trials allow.

    Sizes above the number of training trials are dropped; when none is left, the one
    size is every training trial.
    """
    n = len(data.stimuli_train)
    sizes = sorted({int(k) for k in params["support_sizes"] if int(k) <= n})
    dropped = [int(k) for k in params["support_sizes"] if int(k) > n]
    if dropped:
        log.info("sub-%s: %d training trials; support sizes %s skipped", data.subject, n, dropped)
    return sizes or [n]


@register_model(
    "incontext",
    kind="encoding",
    torch=True,
    defaults=INCONTEXT_DEFAULTS,
    pretrain=meta_train,
)
def incontext(data: JobData, params: dict) -> FitResult:
    """The held-out subject's encoders from support sets of increasing size.

    ``params["pretrained"]`` holds the network meta-trained without this subject. For
    each support size ``k`` (:func:`support_sizes`) the same support trials give the
    in-context prediction ``incontext<k>`` and ridge's ``ridge<k>``; the model's own
    prediction is the in-context one at the largest size.

    Weights: the per-voxel ``coef (p, n_voxels)`` and ``intercept`` read from the largest
    support set, and ``support_trials`` (indices into the training trials).
    """
    weights = params["pretrained"]
    seed = int(params["seed"])
    sizes = support_sizes(data, params)
    extra: dict[str, np.ndarray] = {}
    info: dict[str, str] = {"support_sizes": ",".join(map(str, sizes))}
    for k in sizes:
        idx = support_trials(data, k, seed)
        pred, coef, intercept = predict_in_context(
            weights,
            params,
            data.features_train[0][idx],
            data.betas_train[idx],
            data.features_test[0],
        )
        extra[f"incontext{k}"] = pred
        extra[f"ridge{k}"], _ = ridge_on_support(data, idx, params)
    return FitResult(
        weights={"coef": coef, "intercept": intercept, "support_trials": idx.astype(np.float32)},
        predicted=pred,
        extra_predictions=extra,
        info={**info, "largest_support": str(sizes[-1])},
    )
