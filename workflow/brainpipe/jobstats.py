"""Each job's measured wall time and peak memory against the memory it declares.

Every rule has Snakemake's ``benchmark:`` directive (``benchmarks/{dataset}/<rule>/...tsv``:
wall seconds, ``max_rss`` in MB, CPU time). The declared ``mem_mb`` of each job — after
the rule, the profile and ``--set-resources`` have all had their say — is what Snakemake
prints for the job in a dry run (``resources: ... mem_mb=N``), next to its ``benchmark:``
path. :func:`memory_report` joins the two; the command line runs both::

    python -m brainpipe.jobstats --cores 2 --configfile my.yaml   # after the real run

and exits 1 when a job's max RSS went over its ``mem_mb``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from brainpipe.errors import BrainpipeInputError

_RULE = re.compile(r"^(?:local)?rule (\w+):")
_FIELD = re.compile(r"^\s+(benchmark|resources|wildcards): (.*)$")


def declared_resources(dry_run_text: str) -> pd.DataFrame:
    """Rule, wildcards, benchmark path and ``mem_mb`` of every job of a dry run's text.

    Parameters
    ----------
    dry_run_text : str
        What ``snakemake -n --forceall`` prints (its job blocks).

    Returns
    -------
    pandas.DataFrame
        Columns ``rule, wildcards, benchmark, mem_mb`` (jobs without a benchmark
        are left out).
    """
    rows, job = [], None
    for line in dry_run_text.splitlines():
        m = _RULE.match(line)
        if m:
            job = {"rule": m.group(1), "wildcards": "", "benchmark": None, "mem_mb": None}
            rows.append(job)
            continue
        f = _FIELD.match(line)
        if f and job is not None:
            key, value = f.groups()
            if key == "resources":
                mem = re.search(r"(?:^|, )mem_mb=(\d+)", value)
                job["mem_mb"] = int(mem.group(1)) if mem else None
            else:
                job[key] = value.strip()
    table = pd.DataFrame(rows, columns=["rule", "wildcards", "benchmark", "mem_mb"])
    return table.dropna(subset=["benchmark"]).drop_duplicates("benchmark").reset_index(drop=True)


def read_benchmark(path: str | Path) -> dict[str, float]:
    """Wall seconds, max RSS (MB) and CPU seconds of one benchmark file (its last repeat)."""
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t")
    except (OSError, pd.errors.ParserError) as err:
        msg = f"not a Snakemake benchmark file ({err})"
        raise BrainpipeInputError(path, "<file>", msg) from err
    for col in ("s", "max_rss"):
        if col not in table:
            raise BrainpipeInputError(path, col, "column missing from the benchmark file")
    last = table.iloc[-1]

    def number(col: str) -> float:
        value = pd.to_numeric(last.get(col, float("nan")), errors="coerce")
        return float(value)

    return {"seconds": number("s"), "max_rss_mb": number("max_rss"), "cpu_s": number("cpu_time")}


def memory_report(declared: pd.DataFrame, root: str | Path = ".") -> pd.DataFrame:
    """Join the declared ``mem_mb`` with the measured max RSS of every job that has run.

    Parameters
    ----------
    declared : pandas.DataFrame
        From :func:`declared_resources`.
    root : path
        The working directory of the run (benchmark paths are relative to it).

    Returns
    -------
    pandas.DataFrame
        ``rule, wildcards, seconds, cpu_s, max_rss_mb, mem_mb, rss_over_mem`` (the ratio;
        over 1 means the job used more than it declared), one row per benchmark file
        found; sorted by the ratio, highest first.
    """
    rows = []
    for job in declared.itertuples():
        path = Path(root, job.benchmark)
        if not path.exists():
            continue
        rows.append({"rule": job.rule, "wildcards": job.wildcards, "mem_mb": job.mem_mb,
                     **read_benchmark(path)})  # fmt: skip
    cols = ["rule", "wildcards", "seconds", "cpu_s", "max_rss_mb", "mem_mb"]
    table = pd.DataFrame(rows, columns=cols)
    table["rss_over_mem"] = table["max_rss_mb"] / pd.to_numeric(table["mem_mb"])
    return table.sort_values("rss_over_mem", ascending=False).reset_index(drop=True)


def dry_run(snakemake_args: Sequence[str], cwd: str | Path = ".") -> str:
    """The text of ``snakemake -n --forceall <args>`` run in ``cwd``."""
    cmd = [sys.executable, "-m", "snakemake", "-n", "--forceall", *snakemake_args]
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def main(argv: Sequence[str] | None = None) -> int:
    """Print every job's max RSS against its mem_mb; 1 when one is over."""
    args = list(sys.argv[1:] if argv is None else argv)
    table = memory_report(declared_resources(dry_run(args)))
    if table.empty:
        print("no benchmark files found: run the workflow first")
        return 1
    print(table.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    over = table[table["rss_over_mem"] > 1]
    for job in over.itertuples():
        print(f"OVER: {job.rule} {job.wildcards}: {job.max_rss_mb:.0f} MB > mem_mb {job.mem_mb}")
    return 1 if len(over) else 0


if __name__ == "__main__":
    raise SystemExit(main())
