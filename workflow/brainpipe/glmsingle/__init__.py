"""Single-trial betas at the level of GLMsingle (Prince et al., eLife 2022).

Types, each building on the previous one:

- A: ON-OFF GLM with the assumed HRF (GLMsingle's, ``config/hrf_assumed.tsv``;
  per-voxel R², noise pool) and single-trial least squares with that HRF;
- B: each voxel's HRF chosen from a library (``config/hrf_library.tsv``);
- C: GLMdenoise noise regressors, their number chosen by leave-one-run-out CV;
- D: per-voxel fractional ridge chosen by the same CV, rescaled.

Modules: :mod:`.backend` (numpy / torch / CUDA switch), :mod:`.library` (HRF
table), :mod:`.solvers` (pure math), :mod:`.estimator` (streamed fit),
:mod:`.chunking` (voxel chunk from memory). The subject driver that writes
betas.zarr is :mod:`brainpipe.betas.glmsingle`.
"""

from brainpipe.glmsingle.backend import Backend, get_backend
from brainpipe.glmsingle.estimator import (
    TYPES,
    GLMSingle,
    GLMSingleOptions,
    GLMSingleResult,
    RunSpec,
    check_types,
)
from brainpipe.glmsingle.library import library_kernels, read_hrf_library

__all__ = [
    "TYPES",
    "Backend",
    "GLMSingle",
    "GLMSingleOptions",
    "GLMSingleResult",
    "RunSpec",
    "check_types",
    "get_backend",
    "library_kernels",
    "read_hrf_library",
]
