"""A small array backend so the alignment solvers run on numpy or torch (CPU or CUDA).

The solvers in :mod:`brainpipe.align._solvers` use only the methods of
:class:`AlignBackend` plus ``@``, ``.T``, indexing and arithmetic, which numpy
arrays and torch tensors share. Solvers work in float64: alignment is fitted on a
few hundred to a few thousand averaged stimuli, so precision is cheap and the
fitted transforms are reproducible to the bit on one machine.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Names accepted by :func:`get_backend`.
BACKENDS = ("numpy", "torch", "torch_cuda")


class AlignBackend:
    """Array functions with one interface for numpy and torch (himalaya style).

    Parameters
    ----------
    name : {"numpy", "torch", "torch_cuda"}
    """

    def __init__(self, name: str) -> None:
        if name not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
        self.name = name
        self._torch = None
        self.device = "cpu"
        if name != "numpy":
            import torch

            if name == "torch_cuda" and not torch.cuda.is_available():
                raise ValueError("backend 'torch_cuda' requested but no CUDA device is available")
            self._torch = torch
            self.device = "cuda" if name == "torch_cuda" else "cpu"

    def __repr__(self) -> str:
        return f"AlignBackend({self.name!r})"

    def asarray(self, a: Any) -> Any:
        """float64 array on this backend's device."""
        if self._torch is None:
            return np.asarray(a, dtype=np.float64)
        t = self._torch
        if isinstance(a, t.Tensor):
            return a.to(device=self.device, dtype=t.float64)
        return t.as_tensor(np.asarray(a, dtype=np.float64), device=self.device)

    def to_numpy(self, a: Any) -> np.ndarray:
        if self._torch is None:
            return np.asarray(a)
        return a.detach().cpu().numpy()

    def svd(self, a: Any) -> tuple[Any, Any, Any]:
        """Thin SVD ``a = U diag(s) Vt``."""
        if self._torch is None:
            return np.linalg.svd(a, full_matrices=False)
        return self._torch.linalg.svd(a, full_matrices=False)

    def eigh(self, a: Any) -> tuple[Any, Any]:
        if self._torch is None:
            return np.linalg.eigh(a)
        return self._torch.linalg.eigh(a)

    def norm(self, a: Any) -> float:
        """Frobenius norm as a Python float."""
        if self._torch is None:
            return float(np.linalg.norm(a))
        return float(self._torch.linalg.norm(a))

    def sum(self, a: Any, axis: int | None = None) -> Any:
        if self._torch is None:
            return a.sum(axis=axis)
        return a.sum() if axis is None else a.sum(dim=axis)

    def diag(self, a: Any) -> Any:
        return np.diag(a) if self._torch is None else self._torch.diag(a)

    def zeros(self, shape: tuple[int, ...]) -> Any:
        if self._torch is None:
            return np.zeros(shape)
        return self._torch.zeros(shape, dtype=self._torch.float64, device=self.device)


def get_backend(name: str = "numpy") -> AlignBackend:
    """The backend called ``name`` (``numpy``, ``torch`` or ``torch_cuda``).

    Raises
    ------
    ValueError
        For an unknown name, or ``torch_cuda`` without a CUDA device.
    """
    return AlignBackend(name)
