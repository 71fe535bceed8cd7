"""The repository is an installed project with a layered `utils`, checked from the source (no module is executed):
`import utils` works from any folder and nothing edits ``sys.path``; the import graph has no cycle and
docs/imports.md shows it; no package import hides inside a function; no private name crosses modules; `utils/prep`
serves only the prep scripts; `utils` stays thin."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import import_graph as ig  # scripts/import_graph.py (pyproject puts scripts/ on pytest's path)

REPO = Path(__file__).resolve().parent.parent
# Lines of utils/ without prep/ and synthetic/, docstrings and blank lines included: a thin package has at most 5,000
# (5,000 today, from 8,672 before the redesign).
UTILS_BUDGET = 5000

#: who may import utils.prep (and utils.prep itself): the prep scripts, the VLM describer and the synthetic generator;
#: scripts/predict.py replays the training descriptions for a new photo with prep's describers, and only those
PREP_USERS = {"mat2py.py": None, "prepare_flickr8k.py": None, "scripts/describe.py": None, "utils/prep/": None,
              "utils/synthetic/": None, "scripts/predict.py": {"utils.prep.emotic", "utils.prep.vlm"}}


def _sources() -> dict[Path, str]:
    """Notebooks (their code cells), scripts, benchmarks and the prep scripts."""
    files = {p: p.read_text(encoding="utf-8") for d in ("scripts", "benchmarks") for p in (REPO / d).glob("*.py")}
    files.update({p: p.read_text(encoding="utf-8") for p in REPO.glob("*.py") if p.name != "conftest.py"})
    for nb in (REPO / "notebooks").glob("*.ipynb"):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        files[nb] = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return files


def _imports(path: Path, text: str | None = None) -> list[tuple[int, bool, str, list[str]]]:
    """Every import statement of ``path`` (see ``import_graph.imports``), relative ones resolved for `utils`."""
    inside = path.is_relative_to(REPO / "utils")
    here = ig.module_name(path, REPO) if inside else ""
    return ig.imports(path.read_text(encoding="utf-8") if text is None else text, here, path.name == "__init__.py")


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_utils_imports_from_another_folder(tmp_path):
    out = subprocess.run([sys.executable, "-c", "import utils; print(utils.__file__)"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0, f"`import utils` failed outside the repository (is it installed? make venv):\n{out.stderr}"
    assert Path(out.stdout.strip()).resolve() == REPO / "utils" / "__init__.py"


def test_no_sys_path_edits():
    sources = _sources()
    assert len([p for p in sources if p.suffix == ".ipynb"]) == 6
    offenders = sorted(_rel(p) for p, text in sources.items() if "sys.path" in text)
    assert not offenders, f"these edit sys.path instead of importing the installed package: {offenders}"


def test_import_graph_has_no_cycle_and_docs_show_it():
    g = ig.graph()
    assert g.has_edge("utils.attack.search", "utils.attack.sparse"), "the parser must see relative imports"
    assert g.has_edge("utils.robustness", "utils.attack"), "and absolute ones"
    found = ig.cycles(g)
    assert not found, f"utils modules import each other in a cycle: {found}"
    assert (REPO / "docs" / "imports.md").read_text(encoding="utf-8") == ig.markdown(g), \
        "docs/imports.md is stale: python scripts/import_graph.py > docs/imports.md"


def test_the_parser_finds_a_planted_cycle_and_a_function_import(tmp_path, monkeypatch):
    """A two-module package that imports itself back, once at module level, once inside a function."""
    (tmp_path / "utils").mkdir()
    (tmp_path / "utils" / "__init__.py").write_text("")
    (tmp_path / "utils" / "a.py").write_text("from . import b\n")
    (tmp_path / "utils" / "b.py").write_text("import numpy\n\n\nclass C:\n    def f(self):\n        from .a import x\n")
    monkeypatch.setattr(ig, "PACKAGE", tmp_path / "utils")
    assert ig.cycles(ig.graph()) == [["utils.a", "utils.b"]]
    assert ig.imports((tmp_path / "utils" / "b.py").read_text(), "utils.b") == \
        [(1, False, "numpy", ["numpy"]), (6, True, "utils.a", ["utils.a.x"])]


def test_no_package_import_inside_a_function():
    """Third-party packages may load lazily inside a function (transformers, matplotlib); `utils` modules may not:
    a function-level import of the package only hides a cycle or a layering error."""
    offenders = [f"{_rel(p)}:{line}: from {base} import {', '.join(n.rpartition('.')[2] for n in names)}"
                 for p in sorted((REPO / "utils").rglob("*.py")) for line, in_function, base, names in _imports(p)
                 if in_function and (base == "utils" or base.startswith("utils."))]
    assert not offenders, f"utils modules imported inside a function (import them at the top): {offenders}"


def test_no_private_name_imported_across_modules():
    paths = [*sorted((REPO / "utils").rglob("*.py")), *sorted((REPO / "scripts").glob("*.py")), *REPO.glob("*.py")]
    offenders = [f"{_rel(p)}:{line}: {name}" for p in paths for line, _, base, names in _imports(p)
                 if base != "__future__" for name in names
                 if name.rpartition(".")[2].startswith("_") and not name.rpartition(".")[2].startswith("__")]
    assert not offenders, f"private names imported from another module: {offenders}"


def test_prep_is_imported_only_by_the_prep_scripts():
    sources = {p: text for p, text in _sources().items() if not p.is_relative_to(REPO / "benchmarks")}
    sources.update({p: p.read_text(encoding="utf-8") for p in (REPO / "utils").rglob("*.py")})
    modules = set(ig.graph())
    offenders = []
    for path, text in sorted(sources.items()):
        rel = _rel(path)
        allowed = next((v for k, v in PREP_USERS.items() if rel == k or (k.endswith("/") and rel.startswith(k))),
                       set())
        for line, _, base, names in _imports(path, text):
            imported = {n if n in modules else base for n in names}  # `from a import b`: a.b if a module, else a
            prep = {m for m in imported if m == "utils.prep" or m.startswith("utils.prep.")}
            if allowed is not None and prep - allowed:
                offenders.append(f"{rel}:{line}: {', '.join(sorted(prep))}")
    assert not offenders, f"utils/prep is for the prep scripts only (image decoding lives in utils/images.py): " \
                          f"{offenders}"


def test_utils_is_thin():
    sizes = {_rel(p): len(p.read_text(encoding="utf-8").splitlines()) for p in (REPO / "utils").rglob("*.py")
             if not p.is_relative_to(REPO / "utils" / "prep") and not p.is_relative_to(REPO / "utils" / "synthetic")}
    total, largest = sum(sizes.values()), sorted(sizes.items(), key=lambda kv: -kv[1])[:8]
    assert total <= UTILS_BUDGET, \
        f"utils/ without prep/ and synthetic/ has {total} lines (budget {UTILS_BUDGET}); " \
        f"the largest: {largest}"
