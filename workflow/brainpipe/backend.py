"""The one array backend and device switch of the package (himalaya style).

Solvers are written once against :class:`Backend`: its methods plus ``@``, ``.T``,
indexing and arithmetic, which numpy arrays and torch tensors share. The GLMsingle solvers
use it in float32 (``betas.backend``), the alignment solvers in float64 (``align.backend``).
Torch code that needs a ``torch.device`` (the models, feature networks, M/EEG decoders)
gets it from :func:`torch_device`. Every CUDA check of the package is here: without a
visible GPU ``auto`` means numpy (or the CPU), so the same code runs on a laptop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from brainpipe.errors import BrainpipeInputError

if TYPE_CHECKING:
    import torch

#: Names accepted by :func:`get_backend`: ``auto`` is ``torch_cuda`` when a GPU is
#: visible, else ``numpy``; ``torch`` runs on the CPU.
BACKENDS = ("auto", "numpy", "torch", "torch_cuda")
#: Dtypes a backend computes in.
DTYPES = ("float32", "float64")
#: Devices accepted by :func:`device_name` and :func:`torch_device`.
DEVICES = ("auto", "cpu", "cuda")


def cuda_available() -> bool:
    """Whether torch sees a CUDA device."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


def device_name(prefer: str = "auto", key: str | None = None) -> str:
    """``"cuda"`` or ``"cpu"`` for a requested device.

    Parameters
    ----------
    prefer : {"auto", "cpu", "cuda"}
        ``auto``: CUDA when visible, else the CPU.
    key : str, optional
        The config key the request came from. With a key, ``cuda`` without a visible GPU
        is an error naming it; without, it falls back to the CPU.

    Raises
    ------
    BrainpipeInputError
        ``cuda`` requested (with ``key``) and none is visible, or an unknown name.
    """
    if prefer not in DEVICES:
        raise BrainpipeInputError(
            "config", key or "device", f"expected one of {DEVICES}, got {prefer!r}"
        )
    if prefer == "cpu":
        return "cpu"
    if cuda_available():
        return "cuda"
    if prefer == "cuda" and key is not None:
        raise BrainpipeInputError("config", key, "cuda requested, none available")
    return "cpu"


def torch_device(prefer: str = "auto") -> torch.device:
    """The ``torch.device`` of :func:`device_name` (``cuda`` falls back to the CPU)."""
    import torch

    return torch.device(device_name(prefer))


class Backend:
    """Array functions with one interface for numpy and torch.

    Parameters
    ----------
    name : {"numpy", "torch", "torch_cuda"}
        ``torch`` runs on the CPU, ``torch_cuda`` on the first CUDA device.
    dtype : {"float32", "float64"}
        What :meth:`asarray`, :meth:`zeros` and :meth:`full` make.
    """

    def __init__(self, name: str, dtype: str = "float32") -> None:
        if name not in BACKENDS or name == "auto":
            raise ValueError(f"backend must be one of {BACKENDS[1:]}, got {name!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        self.name = name
        self.dtype = dtype
        self._np_dtype = np.dtype(dtype)
        self._torch = None
        self.device = "cpu"
        if name != "numpy":
            import torch

            if name == "torch_cuda" and not torch.cuda.is_available():
                raise ValueError("backend 'torch_cuda' requested but no CUDA device is available")
            self._torch = torch
            self._torch_dtype = getattr(torch, dtype)
            self.device = "cuda" if name == "torch_cuda" else "cpu"

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, {self.dtype!r})"

    # conversion ---------------------------------------------------------------------
    def asarray(self, a: Any) -> Any:
        """An array of this backend's dtype on its device."""
        if self._torch is None:
            return np.asarray(a, dtype=self._np_dtype)
        t = self._torch
        if isinstance(a, t.Tensor):
            return a.to(device=self.device, dtype=self._torch_dtype)
        return t.as_tensor(np.asarray(a, dtype=self._np_dtype), device=self.device)

    def to_numpy(self, a: Any) -> np.ndarray:
        """A numpy array (copied to the host from a GPU)."""
        if self._torch is None:
            return np.asarray(a)
        return a.detach().cpu().numpy()

    def zeros(self, shape: tuple[int, ...]) -> Any:
        if self._torch is None:
            return np.zeros(shape, dtype=self._np_dtype)
        return self._torch.zeros(shape, dtype=self._torch_dtype, device=self.device)

    def full(self, shape: tuple[int, ...], value: float) -> Any:
        if self._torch is None:
            return np.full(shape, value, dtype=self._np_dtype)
        return self._torch.full(shape, value, dtype=self._torch_dtype, device=self.device)

    # linear algebra -------------------------------------------------------------------
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

    def diag(self, a: Any) -> Any:
        return np.diag(a) if self._torch is None else self._torch.diag(a)

    # reductions and elementwise ---------------------------------------------------------
    def sum(self, a: Any, axis: int | None = None) -> Any:
        if self._torch is None:
            return a.sum(axis=axis)
        return a.sum() if axis is None else a.sum(dim=axis)

    def sqrt(self, a: Any) -> Any:
        return np.sqrt(a) if self._torch is None else self._torch.sqrt(a)

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        if self._torch is None:
            return np.where(cond, a, b).astype(self._np_dtype)
        t = self._torch
        kw = {"dtype": self._torch_dtype, "device": self.device}
        a = a if isinstance(a, t.Tensor) else t.tensor(a, **kw)
        b = b if isinstance(b, t.Tensor) else t.tensor(b, **kw)
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

    # sparse ---------------------------------------------------------------------------
    def sparse(self, m: sp.spmatrix) -> Any:
        """A sparse matrix on this backend, for :meth:`spmm`."""
        m = sp.csr_matrix(m, dtype=self._np_dtype)
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
            return np.asarray(m @ dense, dtype=self._np_dtype)
        return self._torch.sparse.mm(m, dense)


def get_backend(name: str = "auto", dtype: str = "float32") -> Backend:
    """The backend called ``name``; ``auto`` is torch CUDA when a GPU is visible, else numpy.

    Parameters
    ----------
    name : {"auto", "numpy", "torch", "torch_cuda"}
    dtype : {"float32", "float64"}

    Raises
    ------
    ValueError
        For an unknown name, or ``torch_cuda`` without a CUDA device.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name == "auto":
        name = "torch_cuda" if cuda_available() else "numpy"
    return Backend(name, dtype)
