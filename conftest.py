"""Session set-up shared by the unit tests and the notebook runs.

Notebook tests (marker ``notebook``, in ``tests/test_notebook_results.py``) execute each notebook once, in reading
order, on the ``smoke`` profile (``MMER_PROFILE``, default smoke): the synthetic smoke datasets are generated in
the real raw formats and passed through the two prep scripts once per checkout, exactly as the main job does
(``scripts/run_all.py --profile smoke --prepare-only``). Their outputs go to the throw-away folder
``outputs/test-<profile>``, emptied when the first notebook starts. They are collected last, so the unit tests
report first and never need a notebook to have run; ``pytest -m "not notebook"`` runs the unit tests alone.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO / "scripts"))

import run_all  # noqa: E402

CELL_TIMEOUT = 600  # seconds allowed per notebook cell; --notebook-cell-timeout changes it
KERNEL_ENV: dict[str, str] = {}  # filled by pytest_configure


def pytest_addoption(parser):
    parser.addoption("--notebook-cell-timeout", type=int, default=CELL_TIMEOUT,
                     help=f"seconds a notebook cell may run in the notebook tests (default {CELL_TIMEOUT})")


def pytest_configure(config):
    # Set before any kernel starts, so notebook kernels inherit it.
    os.environ.setdefault("MMER_PROFILE", "smoke")
    profile = os.environ["MMER_PROFILE"]
    os.environ.setdefault("EMOTIC_ARTEFACTS", str(REPO / "data" / profile / "emotic"))
    os.environ.setdefault("FLICKR8K_ARTEFACTS", str(REPO / "data" / profile / "flickr8k"))
    # Always the throw-away folder (never a user's MMER_OUTPUT): the notebook tests empty it.
    os.environ["MMER_OUTPUT"] = str(REPO / "outputs" / f"test-{profile}")
    os.environ.setdefault("MPLBACKEND", "Agg")
    # The kernels get the environment as it is now: a unit test that leaks a variable cannot reach them.
    KERNEL_ENV.clear()
    KERNEL_ENV.update(os.environ)


def pytest_collection_modifyitems(session, config, items):
    """Notebook tests last (stable order otherwise): unit tests report first and do not wait for the notebooks."""
    items.sort(key=lambda item: item.get_closest_marker("notebook") is not None)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class NotebookRunner:
    """Executes each notebook at most once per session and remembers how it went.

    ``run(name)`` executes ``notebooks/<name>.ipynb`` (the executed copy goes to ``<output>/notebooks/``) and
    returns the output folder, or fails the calling test with the failing cell's number, source and error.
    """

    def __init__(self, output: Path, timeout: int, env: dict | None = None):
        self.output, self.timeout = output, timeout
        self.env = KERNEL_ENV if env is None else env  # the kernels' whole environment
        self.errors: dict[str, str | None] = {}

    def run(self, name: str) -> Path:
        if name not in self.errors:
            self.errors[name] = self._execute(name)
        if self.errors[name] is not None:
            pytest.fail(self.errors[name], pytrace=False)
        return self.output

    def ran(self, name: str) -> bool:
        return self.errors.get(name, "not run") is None

    def _execute(self, name: str) -> str | None:
        from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

        target = self.output / "notebooks" / f"{name}.ipynb"
        try:
            run_all.execute_notebook(REPO / "notebooks" / f"{name}.ipynb", target, self.timeout, env=self.env)
        except (CellExecutionError, CellTimeoutError, DeadKernelError) as err:
            return f"{name}.ipynb{self._failing_cell(target)} failed (executed copy: {target}):\n" + _ANSI.sub("", str(err))
        return None

    @staticmethod
    def _failing_cell(executed: Path) -> str:
        import nbformat

        try:
            nb = nbformat.read(executed, as_version=4)
        except (OSError, ValueError):
            return ""
        code = [c for c in nb.cells if c.cell_type == "code"]
        for i, cell in enumerate(code, 1):
            if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
                return f", code cell {i} of {len(code)},"
        return ""


@pytest.fixture(scope="session")
def notebook_runner(request) -> NotebookRunner:
    """Prepare the data once (not for ``full``: its artefacts must already exist) and empty the output folder."""
    profile = KERNEL_ENV["MMER_PROFILE"]
    if profile != "full":
        subprocess.run([sys.executable, str(REPO / "scripts" / "run_all.py"), "--profile", profile, "--prepare-only"],
                       cwd=REPO, check=True, env=KERNEL_ENV)
    output = Path(KERNEL_ENV["MMER_OUTPUT"])
    shutil.rmtree(output, ignore_errors=True)  # checkpoints of an earlier session would hide a training failure
    output.mkdir(parents=True)
    return NotebookRunner(output, request.config.getoption("--notebook-cell-timeout"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors gain nothing from a second thread, and on a busy 2-core machine OpenMP threads spin-wait."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
