"""The repository is an installed project: `import utils` works from any folder, and no notebook, script or
benchmark edits ``sys.path`` to find it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_utils_imports_from_another_folder(tmp_path):
    out = subprocess.run([sys.executable, "-c", "import utils; print(utils.__file__)"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0, f"`import utils` failed outside the repository (is it installed? make venv):\n{out.stderr}"
    assert Path(out.stdout.strip()).resolve() == REPO / "utils" / "__init__.py"


def _sources() -> dict[str, str]:
    files = {p: p.read_text(encoding="utf-8") for d in ("scripts", "benchmarks") for p in (REPO / d).glob("*.py")}
    files.update({p: p.read_text(encoding="utf-8") for p in REPO.glob("*.py") if p.name != "conftest.py"})
    for nb in (REPO / "notebooks").glob("*.ipynb"):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        files[nb] = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return files


def test_no_sys_path_edits():
    sources = _sources()
    assert len([p for p in sources if p.suffix == ".ipynb"]) == 6
    offenders = sorted(str(p.relative_to(REPO)) for p, text in sources.items() if "sys.path" in text)
    assert not offenders, f"these edit sys.path instead of importing the installed package: {offenders}"
