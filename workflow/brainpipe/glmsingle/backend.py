"""A small array backend so the GLMsingle solvers run on numpy, torch CPU or torch CUDA.

The solvers in :mod:`brainpipe.glmsingle.solvers` only use the methods of
:class:`Backend` plus the ``@`` operator, indexing and arithmetic, which numpy
arrays and torch tensors share. Everything is float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

#: Names accepted by :func:`get_backend`.
BACKENDS = ("auto", "numpy", "torch", "torch_cuda")


class Backend:
    """Array functions with one interface for numpy and torch (himalaya style).

    Parameters
    ----------
    name : {"numpy", "torch", "torch_cuda"}
        ``torch`` runs on the CPU, ``torch_cuda`` on the first CUDA device.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        if name == "numpy":
            self._torch = None
            self.device = "cpu"
        elif name in ("torch", "torch_cuda"):
            import torch

            self._torch = torch
            self.device = "cuda" if name == "torch_cuda" else "cpu"
        else:
            raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"

    # conversion ---------------------------------------------------------------------
    def asarray(self, a: Any) -> Any:
        """float32 array on this backend's device."""
        if self._torch is None:
            return np.asarray(a, dtype=np.float32)
        t = self._torch
        if isinstance(a, t.Tensor):
            return a.to(device=self.device, dtype=t.float32)
        return t.as_tensor(np.asarray(a, dtype=np.float32), device=self.device)

    def to_numpy(self, a: Any) -> np.ndarray:
        if self._torch is None:
            return np.asarray(a)
        return a.detach().cpu().numpy()

    def zeros(self, shape: tuple[int, ...]) -> Any:
        if self._torch is None:
            return np.zeros(shape, dtype=np.float32)
        return self._torch.zeros(shape, dtype=self._torch.float32, device=self.device)

    def full(self, shape: tuple[int, ...], value: float) -> Any:
        if self._torch is None:
            return np.full(shape, value, dtype=np.float32)
        return self._torch.full(shape, value, dtype=self._torch.float32, device=self.device)

    # reductions and elementwise ---------------------------------------------------------
    def sum(self, a: Any, axis: int | None = None) -> Any:
        if self._torch is None:
            return a.sum(axis=axis)
        return a.sum() if axis is None else a.sum(dim=axis)

    def sqrt(self, a: Any) -> Any:
        return np.sqrt(a) if self._torch is None else self._torch.sqrt(a)

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        if self._torch is None:
            return np.where(cond, a, b).astype(np.float32)
        t = self._torch
        a = a if isinstance(a, t.Tensor) else t.tensor(a, dtype=t.float32, device=self.device)
        b = b if isinstance(b, t.Tensor) else t.tensor(b, dtype=t.float32, device=self.device)
        return t.where(cond, a, b)

    def clip(self, a: Any, lo: float | None = None, hi: float | None = None) -> Any:
        if self._torch is None:
            return np.clip(a, lo, hi)
        return self._torch.clamp(a, min=lo, max=hi)

    def log(self, a: Any) -> Any:
        return np.log(a) if self._torch is None else self._torch.log(a)

    def stack(self, arrays: list[Any], axis: int = 0) -> Any:
        if self._torch is None:
            return np.stack(arrays, axis=axis)
        return self._torch.stack(arrays, dim=axis)

    def concatenate(self, arrays: list[Any], axis: int = 0) -> Any:
        if self._torch is None:
            return np.concatenate(arrays, axis=axis)
        return self._torch.cat(arrays, dim=axis)

    def searchsorted_rows(self, sorted_rows: Any, values: Any) -> Any:
        """Per column ``c``: index of ``values[c]`` in the ascending ``sorted_rows[:, c]``."""
        if self._torch is None:
            return (sorted_rows < values[None, :]).sum(axis=0)
        return (sorted_rows < values[None, :]).sum(dim=0)

    def take_rows(self, a: Any, index: Any) -> Any:
        """``a[index[c], c]`` for every column ``c``."""
        if self._torch is None:
            return np.take_along_axis(a, index[None, :], axis=0)[0]
        return self._torch.gather(a, 0, index[None, :].long())[0]

    def sparse(self, m: sp.spmatrix) -> Any:
        """A sparse matrix on this backend, for :meth:`spmm`."""
        m = sp.csr_matrix(m, dtype=np.float32)
        if self._torch is None:
            return m
        coo = m.tocoo()
        t = self._torch
        idx = t.as_tensor(np.vstack([coo.row, coo.col]).astype(np.int64), device=self.device)
        val = t.as_tensor(coo.data, device=self.device)
        return t.sparse_coo_tensor(idx, val, m.shape, check_invariants=False).coalesce()

    def spmm(self, m: Any, dense: Any) -> Any:
        """Sparse (from :meth:`sparse`) times dense."""
        if self._torch is None:
            return np.asarray(m @ dense, dtype=np.float32)
        return self._torch.sparse.mm(m, dense)


def get_backend(name: str = "auto") -> Backend:
    """The backend called ``name``; ``auto`` is torch CUDA when available, else numpy.

    Parameters
    ----------
    name : {"auto", "numpy", "torch", "torch_cuda"}

    Raises
    ------
    ValueError
        For an unknown name, or ``torch_cuda`` without a CUDA device.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name in ("auto", "torch_cuda"):
        try:
            import torch

            cuda = torch.cuda.is_available()
        except ImportError:  # pragma: no cover - torch is a dependency
            cuda = False
        if cuda:
            return Backend("torch_cuda")
        if name == "torch_cuda":
            raise ValueError("backend 'torch_cuda' requested but no CUDA device is available")
        return Backend("numpy")
    return Backend(name)
