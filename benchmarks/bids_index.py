"""How long each BIDS indexing library takes on an NSD-sized fMRIPrep derivatives tree.

The tree: 8 subjects x 40 sessions x 12 runs of empty files named as fMRIPrep writes them
("Outputs of fMRIPrep", https://fmriprep.org/en/stable/outputs.html; the real tree of
bids-standard/bids-examples ``ds000001-fmriprep``): per run the preprocessed BOLD in
``MNI152NLin2009cAsym`` (``res-2``) and ``T1w`` with JSON sidecars, their brain masks and
boldrefs, the confounds TSV + JSON, and both ``fsaverage5`` hemispheres (12 files per run,
46,080 files plus the subjects' anat files). Files are empty, JSON files hold ``{}``.

Each library answers the same question in its own fresh process: "for every run, the
preprocessed BOLD in MNI152NLin2009cAsym res-2, its brain mask and its confounds file"
(3,840 run records, checked). Whole-process wall time and peak RSS (benchmarks/measure.py),
plus, inside the process, the import time and the indexing time apart;
ratios against pybids (the usual reference) from the same run. pybids takes minutes on
this tree, so it is timed once (``--pybids-repeats``) and stopped after
``--worker-timeout`` seconds (then its time is a lower bound):

    .venv/bin/python benchmarks/bids_index.py

Libraries not installed in the venv can be put on ``--extra-path`` (a ``pip install
--target`` folder), so candidates are measured before one is chosen.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import measure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bids_index.json"
SPACE, RES = "MNI152NLin2009cAsym", "2"
LIBRARIES = ("nilearn", "bids2table", "pybids")


def make_tree(root: Path, n_sub: int = 8, n_ses: int = 40, n_runs: int = 12) -> int:
    """Write an empty-file fMRIPrep derivatives tree; return the number of files."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "fMRIPrep - fMRI PREProcessing workflow",
                "BIDSVersion": "1.4.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "fMRIPrep", "Version": "23.2.0"}],
            }
        )
    )
    n = 1
    for s in range(1, n_sub + 1):
        sub = f"sub-{s:02d}"
        anat = root / sub / "anat"
        anat.mkdir(parents=True)
        for name in (
            "desc-preproc_T1w.nii.gz",
            "desc-brain_mask.nii.gz",
            f"space-{SPACE}_res-{RES}_desc-preproc_T1w.nii.gz",
            f"space-{SPACE}_res-{RES}_desc-brain_mask.nii.gz",
            "hemi-L_pial.surf.gii",
            "hemi-R_pial.surf.gii",
        ):
            (anat / f"{sub}_{name}").touch()
            n += 1
        for e in range(1, n_ses + 1):
            func = root / sub / f"ses-{e:02d}" / "func"
            func.mkdir(parents=True)
            for r in range(1, n_runs + 1):
                stem = f"{sub}_ses-{e:02d}_task-images_run-{r:02d}"
                names = []
                for space in (f"space-{SPACE}_res-{RES}", "space-T1w"):
                    names += [
                        f"{space}_desc-preproc_bold.nii.gz",
                        f"{space}_desc-preproc_bold.json",
                        f"{space}_desc-brain_mask.nii.gz",
                        f"{space}_boldref.nii.gz",
                    ]
                names += [
                    "desc-confounds_timeseries.tsv",
                    "desc-confounds_timeseries.json",
                    "hemi-L_space-fsaverage5_bold.func.gii",
                    "hemi-R_space-fsaverage5_bold.func.gii",
                ]
                for name in names:
                    path = func / f"{stem}_{name}"
                    # JSON sidecars hold an empty object (pybids parses them); the rest are empty
                    path.write_text("{}") if name.endswith(".json") else path.touch()
                n += len(names)
    return n


def _key(entities: dict) -> tuple[str, str, str]:
    return (str(entities["sub"]), str(entities["ses"]), str(entities["run"]))


def index_nilearn(root: Path) -> int:
    """nilearn.interfaces.bids.get_bids_files (glob) + parse_bids_filename."""
    from nilearn.interfaces.bids import get_bids_files, parse_bids_filename

    def records(tag: str, ext: str, filters: list) -> dict:
        files = get_bids_files(
            str(root), file_tag=tag, file_type=ext, modality_folder="func", filters=filters
        )
        out = {}
        for f in files:
            ent = parse_bids_filename(f)["entities"]
            out[_key(ent)] = f
        return out

    space = [("space", SPACE), ("res", RES)]
    bold = records("bold", "nii.gz", [*space, ("desc", "preproc")])
    mask = records("mask", "nii.gz", [*space, ("desc", "brain")])
    conf = records("timeseries", "tsv", [("desc", "confounds")])
    return sum(1 for k in bold if k in mask and k in conf)


def index_bids2table(root: Path) -> int:
    """bids2table.index_dataset (one Arrow table of every file's entities)."""
    import pyarrow.compute as pc
    from bids2table import index_dataset

    table = index_dataset(root)

    def records(**want: str) -> dict:
        mask = None
        for col, val in want.items():
            cond = pc.equal(table[col], val)
            mask = cond if mask is None else pc.and_(mask, cond)
        sel = table.filter(mask)
        cols = {c: sel[c].to_pylist() for c in ("sub", "ses", "run", "root", "path")}
        return {
            (s, e, r): os.path.join(rt, p)
            for s, e, r, rt, p in zip(
                cols["sub"], cols["ses"], cols["run"], cols["root"], cols["path"], strict=True
            )
        }

    space = {"space": SPACE, "res": RES, "datatype": "func"}
    bold = records(**space, desc="preproc", suffix="bold", ext=".nii.gz")
    mask = records(**space, desc="brain", suffix="mask", ext=".nii.gz")
    conf = records(desc="confounds", suffix="timeseries", ext=".tsv", datatype="func")
    return sum(1 for k in bold if k in mask and k in conf)


def index_pybids(root: Path) -> int:
    """pybids BIDSLayout over the derivatives folder (no validation, no database file)."""
    from bids import BIDSLayout

    layout = BIDSLayout(root, validate=False, is_derivative=True)

    def records(**want: str) -> dict:
        out = {}
        for f in layout.get(**want):
            ent = f.get_entities()
            out[(ent["subject"], ent["session"], str(ent["run"]).zfill(2))] = f.path
        return out

    space = {"space": SPACE, "res": RES, "datatype": "func"}
    bold = records(**space, desc="preproc", suffix="bold", extension=".nii.gz")
    mask = records(**space, desc="brain", suffix="mask", extension=".nii.gz")
    conf = records(desc="confounds", suffix="timeseries", extension=".tsv", datatype="func")
    return sum(1 for k in bold if k in mask and k in conf)


#: What each library imports before it can index (timed apart from the indexing).
IMPORTS = {
    "nilearn": "nilearn.interfaces.bids",
    "bids2table": "bids2table",
    "pybids": "bids",
}


def _worker(lib: str, root: Path) -> None:
    import importlib

    start = time.perf_counter()
    importlib.import_module(IMPORTS[lib])
    imported = time.perf_counter()
    n = {"nilearn": index_nilearn, "bids2table": index_bids2table, "pybids": index_pybids}[lib](
        root
    )
    done = time.perf_counter()
    print(json.dumps({"runs": n, "import_s": imported - start, "index_s": done - imported}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--sessions", type=int, default=40)
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per library (median)")
    parser.add_argument(
        "--pybids-repeats", type=int, default=1, help="timed runs of pybids (minutes each)"
    )
    parser.add_argument(
        "--worker-timeout", type=int, default=1800, help="seconds before a run is stopped"
    )
    parser.add_argument("--libraries", nargs="+", default=list(LIBRARIES))
    parser.add_argument("--extra-path", default="", help="folder prepended to PYTHONPATH")
    parser.add_argument("--worker", nargs=2, metavar=("LIB", "ROOT"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker[0], Path(args.worker[1]))
        return
    env = dict(os.environ)
    if args.extra_path:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (env.get("PYTHONPATH", ""), args.extra_path) if p
        )
    expected = args.subjects * args.sessions * args.runs
    with tempfile.TemporaryDirectory(prefix="bids_index_") as tmp:
        root = Path(tmp, "derivatives", "fmriprep")
        n_files = make_tree(root, args.subjects, args.sessions, args.runs)
        results: dict[str, dict] = {}
        for lib in args.libraries:
            walls, rss, inproc, imports = [], [], [], []
            repeats = args.pybids_repeats if lib == "pybids" else args.repeats
            timed_out = False
            for _ in range(repeats):
                out = Path(tmp, f"{lib}.json")
                with out.open("w") as fh:
                    m = measure(
                        ["timeout", str(args.worker_timeout), sys.executable, __file__,
                         "--worker", lib, str(root)],
                        env=env,
                        stdout=fh,
                    )  # fmt: skip
                if m.returncode == 124:
                    timed_out = True
                    walls.append(m.wall_s)
                    rss.append(m.peak_tree_rss_mb)
                    break
                if m.returncode != 0:
                    raise SystemExit(f"{lib} failed (exit {m.returncode})")
                got = json.loads(out.read_text().strip().splitlines()[-1])
                if got["runs"] != expected:
                    raise SystemExit(f"{lib} found {got['runs']} runs, expected {expected}")
                walls.append(m.wall_s)
                rss.append(m.peak_tree_rss_mb)
                inproc.append(got["index_s"])
                imports.append(got["import_s"])
            walls.sort()
            inproc.sort()
            imports.sort()
            results[lib] = {
                "wall_s_median": walls[len(walls) // 2],
                "wall_s_all": walls,
                "index_s_median": inproc[len(inproc) // 2] if inproc else None,
                "import_s_median": imports[len(imports) // 2] if imports else None,
                "peak_rss_mb": max(rss),
                "runs_found": None if timed_out else expected,
                "timed_out_after_s": args.worker_timeout if timed_out else None,
            }
            print(lib, json.dumps(results[lib]), flush=True)
    ref = results.get("pybids")
    if ref:
        for r in results.values():
            r["wall_ratio_vs_pybids"] = r["wall_s_median"] / ref["wall_s_median"]
    report = {
        "tree": {
            "subjects": args.subjects,
            "sessions": args.sessions,
            "runs": args.runs,
            "files": n_files,
            "space": f"{SPACE} res-{RES}",
        },
        "question": "per run: preproc BOLD + brain mask + confounds TSV",
        "repeats": {
            lib: args.pybids_repeats if lib == "pybids" else args.repeats for lib in args.libraries
        },  # fmt: skip
        "results": results,
        "versions": _versions(env),
        "command": " ".join(["python", "benchmarks/bids_index.py", *sys.argv[1:]]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def _versions(env: dict) -> dict:
    code = (
        "import importlib.metadata as m, json\n"
        "out = {}\n"
        "for d in ('nilearn', 'bids2table', 'pybids', 'pyarrow'):\n"
        "    try: out[d] = m.version(d)\n"
        "    except m.PackageNotFoundError: out[d] = None\n"
        "print(json.dumps(out))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(res.stdout)


if __name__ == "__main__":
    main()
