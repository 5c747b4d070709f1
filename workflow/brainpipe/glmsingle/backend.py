"""The GLMsingle solvers' array backend: the package's one backend, :mod:`brainpipe.backend`
(float32, ``betas.backend``), under the name the GLMsingle modules import it by."""

from brainpipe.backend import BACKENDS, Backend, get_backend

__all__ = ["BACKENDS", "Backend", "get_backend"]
