"""Shared fixtures: a tiny synthetic dataset, generated once per test session."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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


def snakemake_command(workdir: Path, config: dict, *args: str) -> list[str]:
    """The command that runs the real workflow in ``workdir`` with ``config`` (written there)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return [
        sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
        "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"),
        "--cores", "2", *args,
    ]  # fmt: skip


def run_workflow(
    workdir: Path, config: dict, *args: str, timeout: float | None = None
) -> subprocess.CompletedProcess:
    """Run the real workflow in ``workdir`` with ``config``; return the completed process."""
    cmd = snakemake_command(workdir, config, *args)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, timeout=timeout)
