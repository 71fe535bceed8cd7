"""Size profile and file locations, read from the environment so notebooks and scripts agree.

Profiles: ``smoke`` (CI, tiny synthetic data, seconds), ``demo`` (the default run on the bundled synthetic data),
``full`` (real Emotic / Flickr8k prepared by the two prep scripts).

Environment variables (all optional):

- ``MMER_PROFILE``       smoke | demo | full (default demo)
- ``EMOTIC_ARTEFACTS``   folder written by ``mat2py.py``          (default ``data/<profile>/emotic``)
- ``FLICKR8K_ARTEFACTS`` folder written by ``prepare_flickr8k.py`` (default ``data/<profile>/flickr8k``)
- ``MMER_OUTPUT``        where notebooks write metrics, predictions, figures (default ``outputs/<profile>``)
- ``MMER_CACHE``         feature cache folder (default ``.cache/features``)
"""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROFILES = ("smoke", "demo", "full")

PREP_COMMANDS = {
    "emotic": "python mat2py.py --data-dir /path/to/emotic --out {out}",
    "flickr8k": "python prepare_flickr8k.py --data-dir /path/to/flickr8k --out {out}",
}


def profile() -> str:
    """The active size profile; an unknown value is an error rather than a silent default."""
    name = os.environ.get("MMER_PROFILE", "demo").strip().lower()
    if name not in PROFILES:
        raise ValueError(f"MMER_PROFILE={name!r}: expected one of {', '.join(PROFILES)}")
    return name


def artefact_dir(dataset: str) -> Path:
    """Folder of prepared artefacts for ``dataset`` ('emotic' or 'flickr8k')."""
    env = {"emotic": "EMOTIC_ARTEFACTS", "flickr8k": "FLICKR8K_ARTEFACTS"}[dataset]
    return Path(os.environ.get(env) or REPO / "data" / profile() / dataset)


def output_dir() -> Path:
    """Folder for metrics JSON, prediction ``.npz`` files and figures; created on demand."""
    out = Path(os.environ.get("MMER_OUTPUT") or REPO / "outputs" / profile())
    (out / "figures").mkdir(parents=True, exist_ok=True)
    return out


def cache_dir() -> Path:
    return Path(os.environ.get("MMER_CACHE") or REPO / ".cache" / "features")


def require_artefacts(dataset: str, files: list[str]) -> Path:
    """Return the artefact folder, or stop with a message naming the missing file and the command that makes it."""
    root = artefact_dir(dataset)
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        hint = PREP_COMMANDS[dataset].format(out=root)
        raise FileNotFoundError(
            f"{root / missing[0]} not found (profile {profile()!r}). Prepare the data first:\n    {hint}\n"
            f"or run `make run` to build the bundled synthetic data, or point "
            f"{'EMOTIC_ARTEFACTS' if dataset == 'emotic' else 'FLICKR8K_ARTEFACTS'} at a prepared folder."
        )
    return root
