"""The size profile and the folders of artefacts, outputs and the feature cache, from the environment (README.md)."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROFILES = ("smoke", "demo", "full")
ARTEFACT_VARS = {"emotic": "EMOTIC_ARTEFACTS", "flickr8k": "FLICKR8K_ARTEFACTS"}
PREP_COMMANDS = {"emotic": "python mat2py.py --data-dir /path/to/emotic --out {out}",
                 "flickr8k": "python prepare_flickr8k.py --data-dir /path/to/flickr8k --out {out}"}


def profile() -> str:
    """``MMER_PROFILE`` (default demo); an unknown value is an error rather than a silent default."""
    name = os.environ.get("MMER_PROFILE", "demo").strip().lower()
    if name not in PROFILES:
        raise ValueError(f"MMER_PROFILE={name!r}: expected one of {', '.join(PROFILES)}")
    return name


def artefact_dir(dataset: str) -> Path:
    return Path(os.environ.get(ARTEFACT_VARS[dataset]) or REPO / "data" / profile() / dataset)


def output_dir() -> Path:
    """Metrics, predictions and figures (``MMER_OUTPUT``, default ``outputs/<profile>``); created on demand."""
    out = Path(os.environ.get("MMER_OUTPUT") or REPO / "outputs" / profile())
    (out / "figures").mkdir(parents=True, exist_ok=True)
    return out


def cache_dir() -> Path:
    return Path(os.environ.get("MMER_CACHE") or REPO / ".cache" / "features")


def require_artefacts(dataset: str, files: list[str], root=None) -> Path:
    """``root`` (default: the profile's artefact folder), or an error naming the missing file and its command."""
    root = Path(root) if root is not None else artefact_dir(dataset)
    if missing := [f for f in files if not (root / f).is_file()]:
        raise FileNotFoundError(f"{root / missing[0]} not found (profile {profile()!r}). Prepare the data first:\n    "
                                f"{PREP_COMMANDS[dataset].format(out=root)}\nor run `make run` to build the bundled "
                                f"synthetic data, or point {ARTEFACT_VARS[dataset]} at a prepared folder.")
    return root
