"""Cross-subject alignment into a shared space, fitted on shared training stimuli only.

Layers (himalaya style):

- :mod:`._solvers` — on the package's array backend (:mod:`brainpipe.backend`, float64),
  pure functions: scaled Procrustes, hyperalignment, deterministic SRM,
  ridge maps with leave-one-out penalty choice;
- :mod:`.anatomical` — MNI template grid (nilearn) and sparse trilinear resampling for
  volume betas; matching by ``(hemi, vertex)`` for surface betas (e.g. fsaverage);
- :mod:`.parcels` — parcels for piecewise alignment (k-means of coordinates, a NIfTI
  atlas, or a per-hemisphere surface atlas);
- :mod:`._sklearn_api` — estimators with ``fit(Xs)``, ``transform(X, s)``,
  ``inverse_transform(Z, s)``;
- :mod:`.store` — fits one method on all subjects' ``betas.zarr`` and writes
  ``align/{method}.zarr`` (layout in its docstring).
"""

from brainpipe.align._sklearn_api import (
    AnatomicalAlignment,
    PiecewiseAlignment,
    ProcrustesAlignment,
    RidgeAlignment,
    SRMAlignment,
    SurfaceAnatomicalAlignment,
)
from brainpipe.align._solvers import get_backend
from brainpipe.align.metrics import cross_subject_r
from brainpipe.align.store import (
    METHODS,
    average_repeats,
    build_estimator,
    fit_alignment_store,
    method_params,
)

__all__ = [
    "METHODS",
    "AnatomicalAlignment",
    "PiecewiseAlignment",
    "ProcrustesAlignment",
    "RidgeAlignment",
    "SRMAlignment",
    "SurfaceAnatomicalAlignment",
    "average_repeats",
    "build_estimator",
    "cross_subject_r",
    "fit_alignment_store",
    "get_backend",
    "method_params",
]
