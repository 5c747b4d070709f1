"""Wall time and peak memory of the default pipeline (what `make run` runs after install).

Runs `snakemake --cores 2` with config/config.yaml in a fresh directory, so the
repository's own results/ are untouched, then lists the size of every store.

    .venv/bin/python benchmarks/pipeline.py [--workdir DIR] [--cores 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from measure import measure

ROOT = Path(__file__).resolve().parents[1]


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="brainpipe-bench-"))
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(ROOT / "config" / "config.yaml"),
        "--cores",
        str(args.cores),
        "--quiet",
    ]
    result = measure(cmd, cwd=workdir)
    if result.returncode != 0:
        sys.exit(f"pipeline failed (exit {result.returncode}); see {workdir}/logs")
    stores = sorted(workdir.rglob("*.zarr"))
    sizes = {str(p.relative_to(workdir)): round(size_mb(p), 2) for p in stores}
    by_kind: dict[str, float] = {}
    for path, mb in sizes.items():
        kind = Path(path).name if not path.split("/")[-2] == "features" else "features/*.zarr"
        by_kind[kind] = by_kind.get(kind, 0.0) + mb
    report = {
        "command": " ".join(cmd),
        "wall_s": round(result.wall_s, 1),
        "peak_tree_rss_mb": round(result.peak_tree_rss_mb),
        "peak_single_rss_mb": round(result.peak_single_rss_mb),
        "dataset_mb": round(size_mb(workdir / "data"), 1),
        "results_mb": round(size_mb(workdir / "results"), 1),
        "store_mb_by_kind": {k: round(v, 2) for k, v in sorted(by_kind.items())},
        "n_stores": len(stores),
    }
    print(
        f"{'default pipeline (after install)':<34} {result.wall_s:8.1f} s  "
        f"peak RSS {result.peak_tree_rss_mb:6.0f} MB (tree), "
        f"{result.peak_single_rss_mb:6.0f} MB (largest process)"
    )
    print(
        f"data {report['dataset_mb']} MB, results {report['results_mb']} MB in {len(stores)} stores"
    )
    for kind, mb in report["store_mb_by_kind"].items():
        print(f"  {kind:<24} {mb:8.2f} MB")
    out = ROOT / "benchmarks" / "results" / "pipeline.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
