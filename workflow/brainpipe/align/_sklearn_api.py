"""Thin scikit-learn-style estimators around the pure solvers.

Every estimator is fitted on a list of subjects' data ``Xs[s]`` of shape
``(n_samples, n_voxels_s)`` (the same samples, i.e. shared training stimuli averaged
over repeats, in the same order for every subject; voxel counts may differ) and then

- ``transform(X, s)`` maps any trials of subject ``s``, shape ``(n_trials, n_voxels_s)``,
  to the shared space, shape ``(n_trials, n_components)``;
- ``inverse_transform(Z, s)`` maps shared-space responses back to subject ``s``'s voxels.

Each voxel is standardised with the mean and standard deviation of the fitting data
(``means_``, ``scales_``; ``standardize=False``: centred only, scales 1);
``transforms_[s]`` acts on standardised data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from brainpipe.align import _solvers
from brainpipe.align._solvers import get_backend
from brainpipe.align.anatomical import (
    match_vertices,
    template_grid,
    trilinear_operator,
    voxel_size,
)

#: Rows of trials mapped at a time by ``transform`` (bounds the float64 temporaries).
_TRIAL_BLOCK = 2048


def _check_subjects(Xs: Sequence[np.ndarray]) -> list[np.ndarray]:
    if len(Xs) < 2:
        raise ValueError(f"alignment needs at least 2 subjects, got {len(Xs)}")
    out = [np.asarray(X) for X in Xs]
    n = out[0].shape[0]
    for s, X in enumerate(out):
        if X.ndim != 2:
            raise ValueError(f"subject {s}: expected a 2-D (samples, voxels) array, got {X.shape}")
        if X.shape[0] != n:
            raise ValueError(
                f"subject {s} has {X.shape[0]} samples, subject 0 has {n};"
                " every subject must be fitted on the same stimuli"
            )
        if not np.isfinite(X).all():
            raise ValueError(f"subject {s}: fitting data contains NaN or inf")
    return out


def _check_voxel_labels(labels: Sequence[np.ndarray], Xs: list[np.ndarray], problem: str) -> None:
    """Raise ``ValueError(problem)`` unless ``labels`` has one entry per voxel of every subject."""
    if len(labels) != len(Xs) or any(
        len(lab) != X.shape[1] for lab, X in zip(labels, Xs, strict=True)
    ):
        raise ValueError(problem)


def _check_n_components(n_components: int, Xs: Sequence[np.ndarray]) -> int:
    limit = min(Xs[0].shape[0], *(X.shape[1] for X in Xs))
    if not 1 <= int(n_components) <= limit:
        raise ValueError(
            f"n_components={n_components!r}: expected 1 <= n_components <= {limit}"
            " (the number of fitting samples and of every subject's voxels)"
        )
    return int(n_components)


class LinearAlignment:
    """Common base: standardise, fit ``transforms_``, map blocks of trials."""

    backend: str = "numpy"
    standardize: bool = True

    def _stats(self, Xs: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        stats = [_solvers.standardize_stats(X) for X in Xs]
        if not self.standardize:
            stats = [(m, np.ones_like(sc)) for m, sc in stats]
        return stats

    def fit(self, Xs: Sequence[np.ndarray]) -> LinearAlignment:
        Xs = _check_subjects(Xs)
        stats = self._stats(Xs)
        self.means_ = [m for m, _ in stats]
        self.scales_ = [sc for _, sc in stats]
        B = get_backend(self.backend)
        Zs = [B.asarray((X - m) / sc) for X, (m, sc) in zip(Xs, stats, strict=True)]
        transforms, template = self._fit(Zs, B)
        self.transforms_ = [np.asarray(B.to_numpy(W), dtype=np.float64) for W in transforms]
        self.template_ = np.asarray(B.to_numpy(template), dtype=np.float64)
        self.n_components_ = self.template_.shape[1]
        return self

    def _fit(self, Zs: list[Any], B: Any) -> tuple[list[Any], Any]:  # pragma: no cover
        raise NotImplementedError

    def _standardise(self, X: np.ndarray, s: int) -> np.ndarray:
        return (np.asarray(X, dtype=np.float64) - self.means_[s]) / self.scales_[s]

    def transform(self, X: np.ndarray, s: int) -> np.ndarray:
        """Shared-space responses of subject ``s``.

        Parameters
        ----------
        X : ndarray, shape (n_trials, n_voxels_s)
        s : int
            Subject index (position in the list given to ``fit``).

        Returns
        -------
        ndarray of float32, shape (n_trials, n_components)
        """
        W = self.transforms_[s]
        out = np.empty((X.shape[0], W.shape[1]), dtype=np.float32)
        for start in range(0, X.shape[0], _TRIAL_BLOCK):
            out[start : start + _TRIAL_BLOCK] = (
                self._standardise(X[start : start + _TRIAL_BLOCK], s) @ W
            )
        return out

    def inverse_transform(self, Z: np.ndarray, s: int) -> np.ndarray:
        """Subject ``s``'s voxel responses from shared-space responses (pseudo-inverse map).

        Parameters
        ----------
        Z : ndarray, shape (n_trials, n_components)

        Returns
        -------
        ndarray of float64, shape (n_trials, n_voxels_s)
        """
        back = _solvers.pinv_map(self.transforms_[s])
        return np.asarray(Z, dtype=np.float64) @ back * self.scales_[s] + self.means_[s]


class ProcrustesAlignment(LinearAlignment):
    """Hyperalignment: scaled orthogonal maps into an iteratively built template.

    Parameters
    ----------
    n_components : int
        Dimension of the template (at most the number of fitting samples and of any
        subject's voxels).
    n_iter : int
        Level-2 template rounds (see :func:`brainpipe.align._solvers.hyperalign`).
    scaling : bool
        Fit a scale per subject (scaled Procrustes).
    backend : {"numpy", "torch", "torch_cuda"}
    standardize : bool
        z-score each voxel (True) or only centre it.
    """

    def __init__(
        self,
        n_components: int,
        n_iter: int = 2,
        scaling: bool = True,
        backend: str = "numpy",
        standardize: bool = True,
    ) -> None:
        self.n_components = n_components
        self.n_iter = n_iter
        self.scaling = scaling
        self.backend = backend
        self.standardize = standardize

    def _fit(self, Zs: list[Any], B: Any) -> tuple[list[Any], Any]:
        k = _check_n_components(self.n_components, Zs)
        transforms, scales, template = _solvers.hyperalign(Zs, k, B, self.n_iter, self.scaling)
        self.subject_scales_ = scales
        return transforms, template


class SRMAlignment(LinearAlignment):
    """Deterministic shared response model; ``template_`` is the shared response.

    Parameters
    ----------
    n_components : int
    n_iter : int
        Maximum alternations.
    tol : float
        Relative objective change at which to stop.
    seed : int
        Seed of the random orthonormal initialisation.
    backend : {"numpy", "torch", "torch_cuda"}
    standardize : bool
        z-score each voxel (True) or only centre it.
    """

    def __init__(
        self,
        n_components: int,
        n_iter: int = 20,
        tol: float = 1e-6,
        seed: int = 0,
        backend: str = "numpy",
        standardize: bool = True,
    ) -> None:
        self.n_components = n_components
        self.n_iter = n_iter
        self.tol = tol
        self.seed = seed
        self.backend = backend
        self.standardize = standardize

    def _fit(self, Zs: list[Any], B: Any) -> tuple[list[Any], Any]:
        k = _check_n_components(self.n_components, Zs)
        Ws, S, history = _solvers.deterministic_srm(Zs, k, B, self.n_iter, self.tol, self.seed)
        self.objective_ = history
        return Ws, S


class RidgeAlignment(LinearAlignment):
    """Ridge maps from every subject to a common ``n_components``-dimensional target.

    Parameters
    ----------
    n_components : int
    alphas : sequence of float
        Candidate penalties; each subject's is chosen by exact leave-one-out error.
    target : "template" or int
        ``"template"``: the deterministic-SRM shared response of all subjects;
        an int ``r``: the reference subject ``r``'s principal-component scores (the
        reference subject is itself ridge-mapped onto them).
    n_iter, seed : int
        For the SRM template.
    backend : {"numpy", "torch", "torch_cuda"}
    standardize : bool
        z-score each voxel (True) or only centre it.
    """

    def __init__(
        self,
        n_components: int,
        alphas: Sequence[float] = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0),
        target: str | int = "template",
        n_iter: int = 20,
        seed: int = 0,
        backend: str = "numpy",
        standardize: bool = True,
    ) -> None:
        self.n_components = n_components
        self.alphas = alphas
        self.target = target
        self.n_iter = n_iter
        self.seed = seed
        self.backend = backend
        self.standardize = standardize

    def _fit(self, Zs: list[Any], B: Any) -> tuple[list[Any], Any]:
        k = _check_n_components(self.n_components, Zs)
        if self.target == "template":
            _, T, _ = _solvers.deterministic_srm(Zs, k, B, self.n_iter, 1e-6, self.seed)
        elif isinstance(self.target, (int, np.integer)) and 0 <= self.target < len(Zs):
            T = _solvers.pca_scores(Zs[int(self.target)], k, B)
        else:
            raise ValueError(
                f"target={self.target!r}: expected 'template' or a subject index 0..{len(Zs) - 1}"
            )
        Ws, self.alphas_ = [], []
        for Z in Zs:
            W, alpha, _ = _solvers.ridge_map(Z, T, list(self.alphas), B)
            Ws.append(W)
            self.alphas_.append(alpha)
        return Ws, T


class PiecewiseAlignment(LinearAlignment):
    """A functional alignment fitted parcel by parcel: no ``voxels × voxels`` matrix ever.

    In parcel ``p`` the base method is fitted with ``k_p = min(n_components, n_samples,
    min_s n_voxels_{s,p})`` components; the shared space is the concatenation of the
    parcels' spaces (``component_parcel_`` gives each component's parcel) and each
    ``transforms_[s]`` is block-sparse (zero outside the voxel's parcel). Parcels that
    some subject does not reach, and voxels labelled -1, are left out (zero rows).

    Parameters
    ----------
    make_base : callable (k) -> LinearAlignment
        Builds the per-parcel estimator for ``k`` components.
    labels : sequence of ndarray of int, shape (n_voxels_s,)
        Parcel of every voxel of every subject (-1: none).
    n_components : int
        Components per parcel (upper bound).
    """

    def __init__(
        self,
        make_base: Callable[[int], LinearAlignment],
        labels: Sequence[np.ndarray],
        n_components: int,
    ) -> None:
        self.make_base = make_base
        self.labels = labels
        self.n_components = n_components

    def fit(self, Xs: Sequence[np.ndarray]) -> PiecewiseAlignment:
        Xs = _check_subjects(Xs)
        _check_voxel_labels(
            self.labels, Xs, "labels must give one parcel label per voxel of every subject"
        )
        stats = self._stats(Xs)
        self.means_ = [m for m, _ in stats]
        self.scales_ = [sc for _, sc in stats]
        labels = [np.asarray(lab) for lab in self.labels]
        parcels = sorted(set(np.unique(np.concatenate(labels)).tolist()) - {-1})
        n_samples = Xs[0].shape[0]
        blocks, parcel_of, templates, self.parcels_ = [], [], [], []
        for p in parcels:
            idx = [np.flatnonzero(lab == p) for lab in labels]
            k = min(self.n_components, n_samples, *(len(i) for i in idx))
            if k < 1:
                continue
            est = self.make_base(k).fit([X[:, i] for X, i in zip(Xs, idx, strict=True)])
            blocks.append((idx, est))
            templates.append(est.template_)
            parcel_of += [p] * est.n_components_
            self.parcels_.append(p)
        if not blocks:
            raise ValueError("no parcel has voxels in every subject")
        self.component_parcel_ = np.asarray(parcel_of, dtype=np.int64)
        self.template_ = np.concatenate(templates, axis=1)
        self.n_components_ = len(parcel_of)
        self.n_voxels_ = [X.shape[1] for X in Xs]
        self.blocks_ = blocks
        return self

    @property
    def transforms_(self) -> list[np.ndarray]:
        """Dense block-sparse maps, shape (n_voxels_s, n_components), built on request.

        ``transform`` never builds them; they are for storing and inspecting.
        """
        out = []
        for s, n_vox in enumerate(self.n_voxels_):
            W = np.zeros((n_vox, self.n_components_))
            col = 0
            for idx, est in self.blocks_:
                # The base estimator standardised the parcel's voxels the same way.
                W[np.ix_(idx[s], np.arange(col, col + est.n_components_))] = est.transforms_[s]
                col += est.n_components_
            out.append(W)
        return out

    def transform(self, X: np.ndarray, s: int) -> np.ndarray:
        """Shared-space responses of subject ``s``, parcel by parcel, shape (n_trials, K)."""
        out = np.empty((X.shape[0], self.n_components_), dtype=np.float32)
        col = 0
        for idx, est in self.blocks_:
            out[:, col : col + est.n_components_] = est.transform(X[:, idx[s]], s)
            col += est.n_components_
        return out

    def inverse_transform(self, Z: np.ndarray, s: int) -> np.ndarray:
        """Back to subject ``s``'s voxels, parcel by parcel (block pseudo-inverse)."""
        Z = np.asarray(Z, dtype=np.float64)
        out = np.tile(self.means_[s], (Z.shape[0], 1))
        col = 0
        for idx, est in self.blocks_:
            out[:, idx[s]] = est.inverse_transform(Z[:, col : col + est.n_components_], s)
            col += est.n_components_
        return out


class AnatomicalAlignment(LinearAlignment):
    """Resample every subject onto a common MNI template grid (trilinear, sparse).

    The shared space is the set of template voxels (inside nilearn's MNI152 brain mask)
    covered by every subject's voxels; ``template_xyz_`` gives their centres in mm.

    Parameters
    ----------
    ijk : sequence of ndarray of int, shape (n_voxels_s, 3)
        Each subject's voxel indices on its own grid.
    affines : sequence of ndarray, shape (4, 4)
        Each subject's voxel -> mm affine.
    resolution_mm : float or None
        Template voxel size; None: the median of the subjects' voxel sizes.
    """

    def __init__(
        self,
        ijk: Sequence[np.ndarray],
        affines: Sequence[np.ndarray],
        resolution_mm: float | None = None,
    ) -> None:
        self.ijk = ijk
        self.affines = affines
        self.resolution_mm = resolution_mm

    def fit(self, Xs: Sequence[np.ndarray]) -> AnatomicalAlignment:
        Xs = _check_subjects(Xs)
        res = self.resolution_mm or float(np.median([voxel_size(a) for a in self.affines]))
        mask, affine = template_grid(float(res))
        grid_ijk = np.argwhere(mask)
        xyz = grid_ijk @ affine[:3, :3].T + affine[:3, 3]
        ops, covered = [], np.ones(len(grid_ijk), dtype=bool)
        for ijk, aff in zip(self.ijk, self.affines, strict=True):
            op, cov = trilinear_operator(ijk, np.asarray(aff, float), xyz)
            ops.append(op)
            covered &= cov
        if not covered.any():
            raise ValueError("no template voxel is covered by every subject's voxels")
        self.template_affine_ = affine
        self.template_ijk_ = grid_ijk[covered]
        self.template_xyz_ = xyz[covered]
        self.resolution_mm_ = float(res)
        self.operators_ = [sp.csr_matrix(op[covered]) for op in ops]
        stats = self._stats(Xs)
        self.means_ = [m for m, _ in stats]
        self.scales_ = [sc for _, sc in stats]
        Zs = [self._standardise(X, s) for s, X in enumerate(Xs)]
        self.template_ = np.mean(
            [np.asarray(self.operators_[s] @ Z.T).T for s, Z in enumerate(Zs)], axis=0
        )
        self.n_components_ = int(covered.sum())
        return self

    @property
    def transforms_(self) -> list[sp.csr_matrix]:
        """Sparse ``(n_voxels_s, n_template_voxels)`` maps (transposed operators)."""
        return [sp.csr_matrix(op.T) for op in self.operators_]

    def transform(self, X: np.ndarray, s: int) -> np.ndarray:
        op = self.operators_[s]
        out = np.empty((X.shape[0], op.shape[0]), dtype=np.float32)
        for start in range(0, X.shape[0], _TRIAL_BLOCK):
            Z = self._standardise(X[start : start + _TRIAL_BLOCK], s)
            out[start : start + _TRIAL_BLOCK] = np.asarray(op @ Z.T).T
        return out

    def inverse_transform(self, Z: np.ndarray, s: int) -> np.ndarray:
        """Template voxels -> subject ``s``'s voxels, by trilinear interpolation on the template."""
        aff = np.asarray(self.affines[s], float)
        xyz = np.asarray(self.ijk[s]) @ aff[:3, :3].T + aff[:3, 3]
        op, _ = trilinear_operator(self.template_ijk_, self.template_affine_, xyz)
        return np.asarray(op @ np.asarray(Z, np.float64).T).T * self.scales_[s] + self.means_[s]


class SurfaceAnatomicalAlignment(LinearAlignment):
    """Anatomical alignment on a shared surface mesh (e.g. fsaverage): match by vertex.

    Every subject's betas sit on the same template vertices, so the shared space is the
    set of ``(hemi, vertex)`` pairs present in every subject (a subject's ROI selection
    or mask may leave some out), in a common order (``lh`` then ``rh``, by vertex), and
    each subject's map is a selection of its (standardised) voxels. ``template_hemi_``
    and ``template_vertex_`` label the components.

    Parameters
    ----------
    hemis : sequence of ndarray of str, shape (n_voxels_s,)
        Hemisphere of each subject's voxels.
    vertices : sequence of ndarray of int, shape (n_voxels_s,)
        Template vertex index of each subject's voxels, within its hemisphere.
    """

    def __init__(self, hemis: Sequence[np.ndarray], vertices: Sequence[np.ndarray]) -> None:
        self.hemis = hemis
        self.vertices = vertices

    def fit(self, Xs: Sequence[np.ndarray]) -> SurfaceAnatomicalAlignment:
        Xs = _check_subjects(Xs)
        _check_voxel_labels(
            self.hemis, Xs, "hemis/vertices must label every voxel of every subject"
        )
        hemi, vertex, index = match_vertices(self.hemis, self.vertices)
        if not len(vertex):
            raise ValueError("no (hemi, vertex) is present in every subject")
        self.template_hemi_ = hemi
        self.template_vertex_ = vertex
        self.index_ = index
        self.n_voxels_ = [X.shape[1] for X in Xs]
        stats = self._stats(Xs)
        self.means_ = [m for m, _ in stats]
        self.scales_ = [sc for _, sc in stats]
        self.template_ = np.mean(
            [self._standardise(X, s)[:, index[s]] for s, X in enumerate(Xs)], axis=0
        )
        self.n_components_ = len(vertex)
        return self

    @property
    def transforms_(self) -> list[sp.csr_matrix]:
        """Sparse ``(n_voxels_s, n_shared_vertices)`` selection maps (one 1 per column)."""
        K = self.n_components_
        return [
            sp.csr_matrix((np.ones(K), (idx, np.arange(K))), shape=(n, K))
            for idx, n in zip(self.index_, self.n_voxels_, strict=True)
        ]

    def transform(self, X: np.ndarray, s: int) -> np.ndarray:
        idx = self.index_[s]
        out = np.empty((X.shape[0], len(idx)), dtype=np.float32)
        for start in range(0, X.shape[0], _TRIAL_BLOCK):
            block = np.asarray(X[start : start + _TRIAL_BLOCK])[:, idx]
            out[start : start + _TRIAL_BLOCK] = (block - self.means_[s][idx]) / self.scales_[s][idx]
        return out

    def inverse_transform(self, Z: np.ndarray, s: int) -> np.ndarray:
        """Shared vertices -> subject ``s``'s voxels; voxels outside the shared set get
        their fitting mean (no information reaches them)."""
        Z = np.asarray(Z, dtype=np.float64)
        idx = self.index_[s]
        out = np.tile(self.means_[s], (Z.shape[0], 1))
        out[:, idx] = Z * self.scales_[s][idx] + self.means_[s][idx]
        return out
