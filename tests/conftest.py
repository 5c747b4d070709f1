"""Shared fixtures: a tiny synthetic dataset, generated once per test session."""

from pathlib import Path

import pytest

from brainpipe.datasets import synthetic

ROOT = Path(__file__).resolve().parents[1]

#: Small enough to generate in seconds, big enough for every stage to mean something.
TINY = {
    "seed": 3,
    "n_subjects": 2,
    "n_sessions": 2,
    "n_runs": 2,
    "trials_per_run": 24,
    "voxel_size_mm": 8.0,
    "n_shared": 8,
}


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A generated synthetic dataset; copy it before changing anything."""
    root = tmp_path_factory.mktemp("tiny") / "synthetic"
    synthetic.generate(root, synthetic.SyntheticParams.from_config(TINY))
    return root
