"""Deterministic seeding and tensor helpers for the torch models.

The device comes from the package's one switch, :func:`brainpipe.backend.torch_device`:
CUDA when the job has a GPU, the CPU otherwise; seeds fix the initialisation and the data
order, so a CPU run is bit-for-bit repeatable.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch
import torch.nn.functional as F

from brainpipe.backend import cuda_available


def seed_everything(seed: int, threads: int | None = None) -> torch.Generator:
    """Seed python, numpy and torch; deterministic algorithms; returns a CPU generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002  (libraries that use the global state)
    torch.manual_seed(seed)
    if cuda_available():
        torch.cuda.manual_seed_all(seed)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads:
        torch.set_num_threads(int(threads))
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def capped_epochs(n_rows: list[int], params: dict, epochs: int) -> int:
    """``epochs``, or fewer when they would take more than ``params["max_steps"]`` steps.

    ``epochs`` is tuned on small datasets, where an epoch is a few mini-batches; an NSD
    subject's 27,000 training trials make an epoch ~100 mini-batches of 256 (~420 of
    64), and 100 epochs on a CPU most of an hour. The cap keeps the number of optimizer
    steps (what training length means for convergence) whatever the dataset size; at
    least one epoch runs.
    """
    cap = params.get("max_steps")
    if not cap:
        return int(epochs)
    bs = int(params["batch_size"])
    per_epoch = sum(sum(1 for i in range(0, n, bs) if min(bs, n - i) > 1) for n in n_rows)
    return int(min(epochs, max(1, int(cap) // max(per_epoch, 1))))


def tensor(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """float32 tensor on ``device``."""
    return torch.as_tensor(np.ascontiguousarray(a, dtype=np.float32), device=device)


def clip_loss(pred: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP) loss between rows of ``pred`` and ``target``.

    Parameters
    ----------
    pred, target : Tensor, shape (batch, dim)
        Row ``i`` of ``pred`` should match row ``i`` of ``target`` and no other.
    temperature : float
        Softmax temperature of the cosine similarities.
    """
    p = F.normalize(pred, dim=1)
    t = F.normalize(target, dim=1)
    logits = p @ t.T / temperature
    labels = torch.arange(len(p), device=p.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def state_to_numpy(module: torch.nn.Module, prefix: str = "") -> dict[str, np.ndarray]:
    """A module's state dict as float32 numpy arrays (for safetensors)."""
    return {
        prefix + k: v.detach().cpu().numpy().astype(np.float32, copy=True)
        for k, v in module.state_dict().items()
    }


def load_numpy_state(
    module: torch.nn.Module, weights: dict[str, np.ndarray], prefix: str = ""
) -> None:
    """Load the arrays under ``prefix`` into ``module`` (strict)."""
    state = {
        k[len(prefix) :]: torch.as_tensor(v) for k, v in weights.items() if k.startswith(prefix)
    }
    module.load_state_dict(state, strict=True)
