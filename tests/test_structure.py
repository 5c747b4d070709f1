"""The package's shape: no import cycles between modules, no module importing another
package's private names, one home for the betas store and the chunk sizer, every rule
benchmarked, no default repeated in rules."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from .conftest import ROOT

PACKAGE = ROOT / "workflow" / "brainpipe"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(top_level_only: bool) -> dict[str, set[str]]:
    """brainpipe module -> brainpipe modules it imports (at module level, or anywhere)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        nodes = tree.body if top_level_only else list(ast.walk(tree))
        for node in nodes:
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                if t in modules and t != name and not name.startswith(t + "."):
                    graph[name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_cycles_between_modules():
    # Module-level imports: a cycle here breaks imports or forces function-local imports.
    assert cycles(import_graph(top_level_only=True)) == []


def test_betas_package_imports_no_cycle_even_lazily():
    # betas <-> glmsingle used to import each other (one of them inside a function).
    graph = import_graph(top_level_only=False)
    betas = {m: {t for t in ts if t.startswith("brainpipe.")} for m, ts in graph.items()}
    bad = [c for c in cycles(betas) if any(m.startswith("brainpipe.betas") for m in c)]
    assert bad == []


def test_no_module_imports_private_names_of_another_module():
    # A private name (``_x``) is its own module's business, also within a package
    # (nsd_stream used to import nsd's private helpers). A package's own private
    # submodules (``from brainpipe.align import _solvers``) are modules, not names.
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    bad = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "workflow" / "scripts").glob("*.py")]:
        me = module_name(path) if path.is_relative_to(PACKAGE) else path.stem
        nodes = list(ast.walk(ast.parse(path.read_text())))
        for node in nodes:
            if not (isinstance(node, ast.ImportFrom) and node.module and node.level == 0):
                continue
            if not node.module.startswith("brainpipe") or node.module == me:
                continue
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.endswith("__")
                submodule = f"{node.module}.{alias.name}" in modules and me.startswith(
                    node.module + "."
                )
                if private and not submodule:
                    bad.append(f"{me}: {node.module}.{alias.name}")
        aliases = {
            a.asname or a.name
            for n in nodes
            if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("brainpipe")
            for a in n.names
            if f"{n.module}.{a.name}" in modules
        }
        for node in nodes:
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.endswith("__")
            ):
                bad.append(f"{me}: {node.value.id}.{node.attr}")
    assert bad == []


def test_one_betas_template_and_one_chunk_sizer():
    sources = {p: p.read_text() for p in PACKAGE.rglob("*.py")}
    # Only the store module creates a betas array; producers go through BetasLayout.
    creators = [p.name for p, s in sources.items() if re.search(r'create_array\(\s*"betas"', s)]
    assert creators == ["store.py"]
    templates = [p for p, s in sources.items() if "da.zeros((n_trials" in s]
    assert templates == []
    # Memory -> chunk size is computed in one place (compute.chunk_bytes_for).
    sizers = [p.name for p, s in sources.items() if re.search(r"\* 2\s*\*\*\s*20|\* 1e6", s)]
    assert sizers == ["compute.py"], sizers


def test_every_rule_has_a_benchmark_and_no_repeated_default():
    for smk in (ROOT / "rules").glob("*.smk"):
        text = smk.read_text()
        rules = re.findall(r"^\s*(?:rule|checkpoint) (\w+):", text, flags=re.M)
        bodies = re.split(r"^\s*(?:rule|checkpoint) \w+:", text, flags=re.M)[1:]
        for rule, body in zip(rules, bodies, strict=True):
            runs = re.search(r"^\s+(script|shell|run|notebook|wrapper):", body, flags=re.M)
            if runs:  # target-only rules (inputs alone) run no job to measure
                assert "benchmark:" in body, f"{smk.name}: rule {rule} has no benchmark:"
        assert not re.search(r"\.get\(\s*\"\w+\",\s*[\d.]+\)", text), f"{smk.name}: a default"


def test_dataset_kinds_dispatch_through_their_adapters():
    # No if-chain on the dataset's kind, space or betas mode outside the adapters module
    # (brainpipe.datasets.adapters): the downloader, the ingest scripts and the rules look
    # the kind's adapter up.
    scripts = ROOT / "workflow" / "scripts"
    files = [PACKAGE / "download.py", *scripts.glob("*.py"), *(ROOT / "rules").glob("*.smk")]
    branch = re.compile(
        r"(?:DATASET_ENTRY|entry)\.kind\b|\.space\s*[!=]=|betas_mode\([^)]*\)\s*[!=]="
    )
    bad = [f"{p.name}: {m.group(0)}" for p in files for m in branch.finditer(p.read_text())]
    assert bad == []


def test_one_array_backend_and_device_switch():
    # brainpipe.backend is the one backend (align, glmsingle, models, features use it): no
    # other module asks torch for CUDA or defines a numpy/torch array class of its own.
    sources = {p: p.read_text() for p in PACKAGE.rglob("*.py")}
    cuda_checks = [p.name for p, s in sources.items() if "cuda.is_available" in s]
    assert cuda_checks == ["backend.py"]
    backends = [p.name for p, s in sources.items() if re.search(r"def to_numpy\(self", s)]
    assert backends == ["backend.py"]


def test_no_part_of_compute_serves_only_benchmarks():
    # brainpipe.compute holds what the workflow's jobs use; what only a benchmark calls
    # lives beside it in benchmarks/ (benchmarks/slabs.py).
    workflow = " ".join(
        p.read_text()
        for p in [
            *PACKAGE.rglob("*.py"),
            *(ROOT / "workflow" / "scripts").glob("*.py"),
            *(ROOT / "rules").glob("*.smk"),
        ]
        if p.name != "compute.py"
    )
    compute = PACKAGE / "compute.py"
    tree = ast.parse(compute.read_text())
    public = [
        n.name
        for n in tree.body
        if isinstance(n, ast.FunctionDef | ast.ClassDef) and not n.name.startswith("_")
    ]
    own = compute.read_text()
    documented = (ROOT / "cluster" / "README.md").read_text()  # slurm_cluster: a user API
    unused = [
        name
        for name in public
        if not re.search(rf"\b{name}\b", workflow)
        and len(re.findall(rf"\b{name}\(", own)) <= 1  # only its own definition
        and f"brainpipe.compute.{name}" not in documented
    ]
    assert unused == []


def test_no_schema_default_is_repeated_in_code():
    # Each default lives in the schema (applied once by Snakemake's validate); code that
    # runs without a config reads it with brainpipe.config.schema_default, never a literal.
    from brainpipe.config import load_schema

    def defaults(node: dict, path: tuple[str, ...] = ()):
        for key, sub in (node.get("properties") or {}).items():
            if isinstance(sub, dict):
                if "default" in sub and not isinstance(sub["default"], dict):
                    yield (*path, key)
                yield from defaults(sub, (*path, key))

    keys = list(defaults(load_schema()))
    assert ("betas", "voxel_chunk") in keys
    files = [
        *PACKAGE.rglob("*.py"),
        *(ROOT / "workflow" / "scripts").glob("*.py"),
        *(ROOT / "rules").glob("*.smk"),
    ]
    bad = [
        f"{path.name}: {'.'.join(key)}"
        for key in keys
        for path in files
        if re.search(rf'\.get\(\s*"{key[-1]}"\s*,\s*(?!None\b)[^)\s]', path.read_text())
    ]
    assert bad == []


def test_one_feature_registry():
    # Feature models, with their spatial maps, are registered in brainpipe.features only.
    registries = [
        p.name
        for p in (PACKAGE / "features").glob("*.py")
        if re.search(r"^[A-Z_]*FEATURE_MODELS\b.*=", p.read_text(), flags=re.M)
    ]
    assert registries == ["__init__.py"]


def test_no_file_cites_one_outside_the_repository():
    # The architecture document is docs/architecture.md; nothing points out of the checkout.
    outside = re.compile("DESIGN" + r"\.md|\.\./" + "shared/")
    folders = ["workflow", "rules", "tests", "docs", "config", "benchmarks", "cluster"]
    files = [
        p
        for f in folders
        for p in (ROOT / f).rglob("*")
        if p.suffix in {".py", ".smk", ".md", ".yaml"}
    ]
    bad = [str(p.relative_to(ROOT)) for p in files if outside.search(p.read_text(errors="replace"))]
    assert bad == []


def test_meeg_formats_have_readers():
    from brainpipe.datasets.registry import MEEG_FORMATS
    from brainpipe.meeg.jobs import FORMATS

    assert set(MEEG_FORMATS) == set(FORMATS)
