"""Session set-up shared by the unit tests and the notebook runs.

Notebooks (collected by nbval from ``notebooks/``) run on the ``smoke`` profile: the synthetic smoke datasets are
generated in the real raw formats and passed through the two prep scripts once per checkout, exactly as the main
job does (``scripts/run_all.py --profile smoke --prepare-only``). Their outputs go to a throw-away folder.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent


def pytest_configure(config):
    # Set before any kernel starts, so notebook kernels inherit it.
    os.environ.setdefault("MMER_PROFILE", "smoke")
    profile = os.environ["MMER_PROFILE"]
    os.environ.setdefault("EMOTIC_ARTEFACTS", str(REPO / "data" / profile / "emotic"))
    os.environ.setdefault("FLICKR8K_ARTEFACTS", str(REPO / "data" / profile / "flickr8k"))
    os.environ.setdefault("MMER_OUTPUT", str(REPO / "outputs" / f"test-{profile}"))
    os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_collection_finish(session):
    """Prepare the smoke data only when notebooks are about to run (unit tests build their own inputs)."""
    if any(str(item.fspath).endswith(".ipynb") for item in session.items) and os.environ["MMER_PROFILE"] != "full":
        subprocess.run([sys.executable, str(REPO / "scripts" / "run_all.py"), "--profile", os.environ["MMER_PROFILE"],
                        "--prepare-only"], cwd=REPO, check=True)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors gain nothing from a second thread, and on a busy 2-core machine OpenMP threads spin-wait."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
