"""The package's one array backend (brainpipe.backend): numpy and torch give the same
numbers, in the dtype asked for, and ``auto`` falls back to numpy / the CPU without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from brainpipe.backend import cuda_available, device_name, get_backend, torch_device
from brainpipe.errors import BrainpipeInputError


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_and_torch_agree_in_the_dtype_asked_for(dtype):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((12, 5))
    m = sp.random(7, 12, density=0.3, random_state=1)
    out = {}
    for name in ("numpy", "torch"):
        B = get_backend(name, dtype)
        x = B.asarray(a)
        assert str(B.to_numpy(x).dtype) == dtype
        u, s, vt = B.svd(x)
        out[name] = [B.to_numpy(v) for v in (s, B.spmm(B.sparse(m), x), B.sum(x * x, axis=0))]
        assert B.norm(x) == pytest.approx(np.linalg.norm(a), rel=1e-5)
    tol = 1e-5 if dtype == "float32" else 1e-12
    for np_value, torch_value in zip(out["numpy"], out["torch"], strict=True):
        np.testing.assert_allclose(np_value, torch_value, rtol=tol, atol=tol)


def test_auto_is_cuda_only_where_a_gpu_is_visible():
    gpu = cuda_available()
    assert get_backend("auto").name == ("torch_cuda" if gpu else "numpy")
    assert device_name("auto") == ("cuda" if gpu else "cpu")
    assert torch_device("cpu").type == "cpu"
    with pytest.raises(BrainpipeInputError, match="features.device.*expected one of"):
        device_name("gpu0", key="features.device")
    with pytest.raises(ValueError, match="backend must be one of"):
        get_backend("cupy")
    if not gpu:
        assert device_name("cuda") == "cpu"  # models: fall back to the CPU
        with pytest.raises(BrainpipeInputError, match="features.device.*none available"):
            device_name("cuda", key="features.device")
        with pytest.raises(ValueError, match="no CUDA device"):
            get_backend("torch_cuda")
