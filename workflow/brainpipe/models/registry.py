"""Registry of trainable models: encoding (features -> voxels) and decoding (voxels -> embedding).

A model is one function plus the decorator, with its default parameters (its config block)::

    @register_model("my_model", kind="encoding", defaults={"alphas": [1.0, 10.0]})
    def my_model(data: JobData, params: dict) -> FitResult:
        ...

The workflow fans every registered model in ``config["models"]`` out over subject × ROI ×
feature model; ``config["model_params"][name]`` overrides the defaults (unknown keys are an
error naming the key). Every model block also has the fan-out keys of
:data:`COMMON_DEFAULTS`: ``rois`` and ``features`` (``null``: the top-level ``rois`` /
``feature_models``), ``gpu`` (the GPU resource a job declares: 1 for torch models, else 0)
and ``threads``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from brainpipe.errors import BrainpipeInputError

Kind = Literal["encoding", "decoding"]
Inputs = Literal["features", "spatial", "bands", "epochs"]

#: Keys every model block accepts, with their defaults.
COMMON_DEFAULTS: dict[str, Any] = {
    "rois": None,
    "features": None,
    "gpu": 0,
    "threads": 1,
    "mem_mb": 2000,
    "runtime": 30,
}


@dataclass
class FitResult:
    """What a model's fit function returns.

    Attributes
    ----------
    weights : dict of str -> ndarray
        Everything needed to predict again (saved as safetensors, never pickled).
    predicted : ndarray, shape (n_test, n_outputs)
        Predictions for the test stimuli of the job, in their order (``JobData.test_stimuli``).
    extra_predictions : dict of str -> ndarray
        Further predictions of the same shape (e.g. baselines trained on the same data),
        stored next to ``predicted`` and scored by the evaluation as ``<name>_*`` metrics.
    info : dict of str -> str
        Metadata stored with the weights (chosen hyper-parameters, device, epochs...).
    """

    weights: dict[str, np.ndarray]
    predicted: np.ndarray
    extra_predictions: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)


#: Memory of a training job besides its arrays: interpreter, numpy/xarray/zarr, torch (MB).
JOB_BASE_MB = 700
#: Copies of its training betas a (non-voxelwise) model holds at its peak, by default.
DATA_COPIES = 2.0


@dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    Attributes
    ----------
    name : str
        Registry key and ``{model}`` wildcard (lowercase letters and digits).
    kind : {"encoding", "decoding"}
    fit : callable
        ``fit(data, params) -> FitResult`` (cross-subject models: see ``pretrain``).
    defaults : dict
        The model's config block with defaults (merged with :data:`COMMON_DEFAULTS`).
    torch : bool
        Trained with torch (declares a GPU resource, runs on CUDA when there is one).
    inputs : {"features", "spatial", "bands", "epochs"}
        Which feature stores a job reads: one PCA store, the spatial store of the feature
        model, or every store listed in ``params["bands"]``; ``epochs``: an M/EEG model
        (:mod:`brainpipe.meeg.decoding`) reading ``epochs.zarr`` and one PCA store.
    pretrain : callable or None
        Cross-subject models only: ``pretrain(datasets: dict[subject, JobData], params)
        -> dict[str, ndarray]`` (weights); ``fit`` then receives them as
        ``params["pretrained"]``.
    pretrain_subjects_in_memory : int or None
        Cross-subject models: how many subjects' training betas ``pretrain`` holds in
        memory at once (the shared backbone: 1, the others are read from a scratch folder
        a mini-batch at a time); ``None``: every subject's. Sizes the pretrain job's
        memory (:meth:`pretrain_mem_mb`).
    data_copies : float
        Copies of its ROI's training betas the model holds at its peak (sizes the memory
        its jobs declare: :meth:`job_mem_mb`).
    voxelwise : bool
        An encoding model that fits every voxel on its own: its training job leaves the
        betas in the store and ``fit`` reads them with ``data.voxel_blocks(n)`` (sized
        from ``params["mem_mb"]``), so the job's memory does not grow with the ROI.
        Otherwise ``fit`` gets the ROI's training betas in memory.
    reads_betas : bool
        ``fit`` reads the training betas itself (``data.load()``, or
        ``data.restrict_sessions(...)``, which reads just those sessions' trials): the
        training job leaves them in the store, so a model that fits on a subset of the
        trials (the shared backbone's fine-tune on one session) never holds all of them.
    """

    name: str
    kind: Kind
    fit: Callable[..., FitResult]
    defaults: dict[str, Any]
    torch: bool = False
    inputs: Inputs = "features"
    pretrain: Callable[..., dict[str, np.ndarray]] | None = None
    voxelwise: bool = False
    data_copies: float = DATA_COPIES
    pretrain_subjects_in_memory: int | None = None
    reads_betas: bool = False

    @property
    def cross_subject(self) -> bool:
        return self.pretrain is not None

    def job_mem_mb(self, params: Mapping[str, Any], sizes: list[tuple[int, int]]) -> int:
        """The memory (MB) a training job of this model declares on its first attempt.

        A voxelwise model reads its betas in blocks sized from ``params["mem_mb"]``, so it
        declares exactly that. Any other model holds the training betas of its ROI (every
        trial x every voxel, float32: 1.6 GB for an NSD subject's nsdgeneral) ``data_copies``
        times while it fits, on top of :data:`JOB_BASE_MB`; it declares that or
        ``params["mem_mb"]``, whichever is more.

        Parameters
        ----------
        params : mapping
            The model's parameters (:func:`model_params`).
        sizes : list of (n_trials, n_voxels)
            Of each subject whose betas the job reads (the store's trials bound the
            training trials from above).
        """
        declared = int(params["mem_mb"])
        if self.voxelwise:
            return declared
        data_mb = sum(t * v for t, v in sizes) * 4 / 1e6
        return max(declared, int(math.ceil(JOB_BASE_MB + self.data_copies * data_mb)))

    def pretrain_mem_mb(self, params: Mapping[str, Any], sizes: list[tuple[int, int]]) -> int:
        """The memory (MB) a pretraining job (every subject's store in ``sizes``) declares.

        :meth:`job_mem_mb` of the ``pretrain_subjects_in_memory`` largest subjects (all
        of them when ``None``): a model that reads one subject at a time declares what a
        training job of its largest subject declares, whatever the number of subjects.
        """
        k = self.pretrain_subjects_in_memory
        largest = sorted(sizes, key=lambda tv: tv[0] * tv[1], reverse=True)
        return self.job_mem_mb(params, largest if k is None else largest[:k])


MODELS: dict[str, ModelSpec] = {}
"""Registered models by name."""


def register_model(
    name: str,
    kind: Kind = "encoding",
    defaults: Mapping[str, Any] | None = None,
    torch: bool = False,
    inputs: Inputs = "features",
    pretrain: Callable[..., dict[str, np.ndarray]] | None = None,
    voxelwise: bool = False,
    data_copies: float = DATA_COPIES,
    pretrain_subjects_in_memory: int | None = None,
    reads_betas: bool = False,
) -> Callable[[Callable[..., FitResult]], Callable[..., FitResult]]:
    """Decorator registering ``fit`` as model ``name``.

    Parameters
    ----------
    name : str
        Lowercase letters and digits (it is a path component and a wildcard value).
    kind : {"encoding", "decoding"}
    defaults : mapping, optional
        Default parameters (the model's config block).
    torch : bool
        Whether the model trains with torch (GPU resource, CUDA when available).
    inputs : {"features", "spatial", "bands"}
        See :class:`ModelSpec`.
    pretrain : callable, optional
        Cross-subject pretraining function (see :class:`ModelSpec`).
    voxelwise : bool
        The model fits voxels independently and reads them in blocks (see :class:`ModelSpec`).
    data_copies : float
        Copies of its training betas the model holds at its peak (sizes its jobs' memory:
        :meth:`ModelSpec.job_mem_mb`).
    pretrain_subjects_in_memory : int, optional
        Subjects whose training betas ``pretrain`` holds at once (see :class:`ModelSpec`).
    reads_betas : bool
        ``fit`` reads the training betas itself (see :class:`ModelSpec`).
    """
    if not name.isalnum() or name.lower() != name:
        raise ValueError(f"model name must be lowercase letters and digits, got {name!r}")
    if kind not in ("encoding", "decoding"):
        raise ValueError(f"kind must be 'encoding' or 'decoding', got {kind!r}")

    def decorator(func: Callable[..., FitResult]) -> Callable[..., FitResult]:
        if name in MODELS and MODELS[name].fit is not func:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = ModelSpec(
            name=name,
            kind=kind,
            fit=func,
            # Torch models ask SLURM for one GPU (the plugin's `gpu` resource); locally an
            # undeclared resource limit does not hold a job back, and torch falls back to CPU.
            defaults={**COMMON_DEFAULTS, "gpu": int(torch), **dict(defaults or {})},
            torch=torch,
            inputs=inputs,
            pretrain=pretrain,
            voxelwise=voxelwise,
            data_copies=float(data_copies),
            pretrain_subjects_in_memory=pretrain_subjects_in_memory,
            reads_betas=reads_betas,
        )
        return func

    return decorator


def get_model(name: str) -> ModelSpec:
    """The model registered as ``name``; unknown names raise :class:`BrainpipeInputError`."""
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS)) or "(none)"
        raise BrainpipeInputError(
            "config", "models", f"unknown model {name!r}; known models: {known}"
        ) from None


def model_params(name: str, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Parameters of model ``name``: its defaults overridden by ``config["model_params"][name]``.

    ``rois`` and ``features`` left at ``None`` are filled from the top-level ``rois`` and
    ``feature_models`` of ``config``. A top-level block named like the model (the
    historical ``ridge:`` block) is read first, ``model_params.<name>`` overrides it.

    Raises
    ------
    BrainpipeInputError
        On a key the model does not know (the message lists the known keys).
    """
    spec = get_model(name)
    config = dict(config or {})
    legacy = config.get(name) if isinstance(config.get(name), Mapping) else {}
    block = {**legacy, **dict((config.get("model_params") or {}).get(name) or {})}
    for key in block:
        if key not in spec.defaults:
            raise BrainpipeInputError(
                "config",
                f"model_params.{name}.{key}",
                f"unknown key; model {name!r} accepts {', '.join(sorted(spec.defaults))}",
            )
    params = {**spec.defaults, **block}
    if params["rois"] is None:
        params["rois"] = list(config.get("rois") or [])
    if params["features"] is None:
        params["features"] = list(config.get("feature_models") or [])
    return params
