"""Session set-up shared by the unit tests and the notebook runs.

The six notebooks are executed by **nbval** (``pytest --nbval-lax``, set in pyproject.toml), on the ``smoke``
profile (``MMER_PROFILE``, default smoke): before the first notebook cell runs, the synthetic smoke datasets are
generated in the real raw formats and passed through the two prep scripts, exactly as the main job does
(``scripts/run_all.py --profile smoke --prepare-only``), and the throw-away output folder ``outputs/test-<profile>``
is emptied. Collection order: unit tests, then the notebooks in reading order, then the tests that recompute every
number the notebooks saved (marker ``notebook``; they read what nbval's run wrote, through the ``notebook_runner``
fixture). ``pytest -m "not notebook"`` runs the unit tests alone.

Two pytest-xdist workers (``-n 2 --dist loadgroup`` in pyproject.toml; ``-n 0`` runs in one process): nbval's notebooks
and the tests that read their outputs form one group ("notebooks"), sent first and whole to one worker in the order
above; the other tests are grouped by module (a module's fixtures are built once) and fill both workers. Every
process, the notebook kernels included, runs one OpenMP thread: on 2 cores, threads of two workers spin against each
other (a MobileNet call then costs ten times as long).
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import run_all

REPO = Path(__file__).resolve().parent
CELL_TIMEOUT = 600  # seconds allowed per notebook cell in the re-runs (NotebookRunner); nbval's own: --nbval-cell-timeout
KERNEL_ENV: dict[str, str] = {}  # the environment the notebook kernels get, fixed by pytest_configure
_NOTEBOOK_FAILURES: dict[str, list[str]] = {}  # notebook name -> failing cells, as nbval reported them
_PREPARED: list[bool] = []
#: test modules that take the longest (subprocesses, notebook re-runs): started first on the worker the notebooks leave
LONG_MODULES = ("test_distributed", "test_describe", "test_notebooks_with_clip")


def pytest_addoption(parser):
    parser.addoption("--notebook-cell-timeout", type=int, default=CELL_TIMEOUT,
                     help=f"seconds a notebook cell may run in the CLIP notebook re-run (default {CELL_TIMEOUT})")


def pytest_configure(config):
    os.environ.setdefault("MMER_PROFILE", "smoke")
    profile = os.environ["MMER_PROFILE"]
    os.environ.setdefault("EMOTIC_ARTEFACTS", str(REPO / "data" / profile / "emotic"))
    os.environ.setdefault("FLICKR8K_ARTEFACTS", str(REPO / "data" / profile / "flickr8k"))
    # Always the throw-away folder (never a user's MMER_OUTPUT): the notebook run empties it.
    os.environ["MMER_OUTPUT"] = str(REPO / "outputs" / f"test-{profile}")
    os.environ.setdefault("MPLBACKEND", "Agg")
    # one fixed inference batch instead of utils.batching's probe of sizes up to 512 per model and input shape (tens
    # of CPU seconds in a fresh clone, and again in every fresh cache a test makes); tests/test_batching.py probes
    os.environ.setdefault("MMER_INFERENCE_BATCH", "16")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    _keep_freed_memory()
    if "torch" in sys.modules:  # set before torch starts its thread pool, but a plugin may have imported it
        sys.modules["torch"].set_num_threads(1)
    KERNEL_ENV.clear()
    KERNEL_ENV.update(os.environ)


def _keep_freed_memory() -> None:
    """glibc hands a large tensor (a MobileNet activation: tens of MB) its own fresh pages and returns them on free,
    so every batch page-faults them in again: on this CPU more system than model time. Malloc keeps freed memory
    instead (up to 1 GiB per block) in this process (mallopt) and in every process started from it (the xdist
    workers, notebook kernels, scripts, torchrun ranks: GLIBC_TUNABLES). No number changes; elsewhere a no-op."""
    limit = 1 << 30
    os.environ.setdefault("GLIBC_TUNABLES", f"glibc.malloc.mmap_threshold={limit}:glibc.malloc.trim_threshold={limit}")
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, limit)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, limit)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass


def _is_notebook(item) -> bool:
    return item.path.suffix == ".ipynb"


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: the notebooks carry the `notebook` marker too
def pytest_collection_modifyitems(session, config, items):
    """Unit tests first, then the notebooks (nbval, reading order), then the tests that read what they wrote."""
    for item in items:
        if _is_notebook(item):
            item.add_marker(pytest.mark.notebook)
        shared = _is_notebook(item) or "notebook_runner" in getattr(item, "fixturenames", ())
        item.add_marker(pytest.mark.xdist_group("notebooks" if shared else item.path.stem))
    parallel = hasattr(config, "workerinput")  # an xdist worker (xdist resets their `dist` option to "no")

    def stage(item) -> int:
        if parallel:  # xdist hands out groups in collection order: the longest ones first
            return -2 if _is_notebook(item) else -1 if item.path.stem in LONG_MODULES else 0
        return 1 if _is_notebook(item) else 2 if item.get_closest_marker("notebook") else 0
    items.sort(key=stage)


def prepare_data() -> None:
    """Smoke/demo data prepared once per session (a ``full`` profile's artefacts must already exist), under a lock
    that the xdist workers share (the prep script skips steps whose outputs are fresh)."""
    if _PREPARED:
        return
    profile = KERNEL_ENV["MMER_PROFILE"]
    if profile != "full":
        (REPO / "data").mkdir(exist_ok=True)
        with open(REPO / "data" / f".prepare-{profile}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            subprocess.run([sys.executable, str(REPO / "scripts" / "run_all.py"), "--profile", profile,
                            "--prepare-only"], cwd=REPO, check=True, env=KERNEL_ENV)
    _PREPARED.append(True)


@pytest.hookimpl(tryfirst=True)  # before nbval starts the notebook's kernel
def pytest_runtest_setup(item):
    if _is_notebook(item) and not _NOTEBOOK_FAILURES:  # the first notebook cell of the session
        prepare_data()
        # the notebooks' output folder emptied, so checkpoints of an earlier session cannot hide a training failure
        output = Path(KERNEL_ENV["MMER_OUTPUT"])
        shutil.rmtree(output, ignore_errors=True)
        output.mkdir(parents=True)
        # The kernels inherit this process's environment: the one fixed at configure time, whatever a unit test left.
        os.environ.clear()
        os.environ.update(KERNEL_ENV)


def pytest_runtest_logreport(report):
    path = Path(report.nodeid.split("::")[0])
    if path.suffix == ".ipynb":
        failures = _NOTEBOOK_FAILURES.setdefault(path.stem, [])
        if report.failed:
            failures.append(f"{report.nodeid} ({report.when}):\n{report.longreprtext[-3000:]}")


class NotebookRunner:
    """A second run of notebooks beside nbval's, with another environment ``env`` (CLIP encoders, VLM descriptions)
    and its own ``output`` folder, through the main job's executor: ``run(name)`` executes a notebook at most once
    and returns ``output``, or fails the calling test with the failing cell's error."""

    def __init__(self, output, timeout: int, env: dict):
        self.output, self.timeout, self.env = output, timeout, env
        self.errors: dict[str, str | None] = {}

    def run(self, name: str):
        from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

        if name not in self.errors:
            target = self.output / "notebooks" / f"{name}.ipynb"
            try:
                run_all.execute_notebook(REPO / "notebooks" / f"{name}.ipynb", target, self.timeout, env=self.env)
                self.errors[name] = None
            except (CellExecutionError, CellTimeoutError, DeadKernelError) as err:
                self.errors[name] = f"{name}.ipynb failed (executed copy: {target}):\n{err}"
        if self.errors[name] is not None:
            pytest.fail(self.errors[name], pytrace=False)
        return self.output


class ExecutedNotebooks:
    """The notebooks as nbval executed them in this session. ``run(name)`` returns the output folder they wrote, or
    fails the calling test when that notebook was not executed (not collected) or one of its cells failed."""

    def __init__(self, output: Path):
        self.output = output

    def run(self, name: str) -> Path:
        if name not in _NOTEBOOK_FAILURES:
            pytest.fail(f"notebooks/{name}.ipynb was not executed in this session; collect it with the tests that "
                        f"read its outputs, e.g. `pytest notebooks tests/test_notebook_results.py`", pytrace=False)
        if _NOTEBOOK_FAILURES[name]:
            pytest.fail(f"notebooks/{name}.ipynb failed under nbval:\n{_NOTEBOOK_FAILURES[name][0]}", pytrace=False)
        return self.output


@pytest.fixture(scope="session")
def notebook_runner() -> ExecutedNotebooks:
    return ExecutedNotebooks(Path(KERNEL_ENV["MMER_OUTPUT"]))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors gain nothing from a second thread, and on a busy 2-core machine OpenMP threads spin-wait."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_main(main, args, env: dict) -> SimpleNamespace:
    """A command's ``main(argv)`` in this process with ``env`` added to the environment (restored after): its exit
    status (argparse's usage errors included) and printouts, shaped like a finished subprocess."""
    saved = dict(os.environ)
    os.environ.update(env)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(map(str, args)))
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())
