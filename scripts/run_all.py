"""The main job: prepare the data, execute every notebook, print one table of all metrics.

    python scripts/run_all.py                  # demo profile on the bundled synthetic data (what `make run` does)
    python scripts/run_all.py --profile smoke  # the tiny CI data
    EMOTIC_ROOT=~/data/emotic FLICKR8K_ROOT=~/data/flickr8k python scripts/run_all.py --profile full

Synthetic profiles (smoke, demo) generate the raw datasets with ``utils.synthetic`` in the real formats and run the
two prep scripts on them exactly as a user would on the downloads. The ``full`` profile runs the prep scripts on
``EMOTIC_ROOT`` / ``FLICKR8K_ROOT`` (or uses ``EMOTIC_ARTEFACTS`` / ``FLICKR8K_ARTEFACTS`` if already prepared).
Every step is skipped when its outputs are already there, so a second run only re-executes the notebooks.
Executed notebooks go to ``outputs/<profile>/notebooks/``, figures to ``outputs/<profile>/figures/``, metrics to
``outputs/<profile>/metrics/``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FIXTURE_VERSION = "2"  # bump when utils/synthetic/ changes what it writes, so stale raw data is rebuilt


def _run(cmd: list[str], env: dict | None = None) -> None:
    print("$", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], cwd=REPO, check=True, env=env)


def _fresh(stamp: Path, *inputs: Path) -> bool:
    """True when ``stamp`` exists and is newer than every input (files or folders' stamps)."""
    return stamp.is_file() and all(stamp.stat().st_mtime >= p.stat().st_mtime for p in inputs if p.exists())


def prepare_synthetic(profile: str, seed: int = 0) -> dict[str, Path]:
    """Generate the raw synthetic datasets for ``profile`` (once) and prepare artefacts from them (once)."""
    import utils.synthetic as fixtures

    raw = REPO / "data" / "raw" / profile
    stamp = raw / ".complete"
    if not (stamp.is_file() and stamp.read_text().strip() == f"{FIXTURE_VERSION}:{seed}"):
        print(f"[data] generating synthetic {profile} datasets in {raw}", flush=True)
        shutil.rmtree(raw, ignore_errors=True)  # no stale files from an older generator
        fixtures.make_all(raw, size=profile, seed=seed)
        stamp.write_text(f"{FIXTURE_VERSION}:{seed}\n")
    out = {"emotic": REPO / "data" / profile / "emotic", "flickr8k": REPO / "data" / profile / "flickr8k"}
    if not _fresh(out["emotic"] / "manifest.json", stamp):
        _run([sys.executable, "mat2py.py", "--data-dir", raw / "emotic", "--out", out["emotic"],
              "--descriptions", "file", "--descriptions-file", raw / "emotic" / "descriptions.csv"])
    if not _fresh(out["flickr8k"] / "manifest.json", stamp):
        _run([sys.executable, "prepare_flickr8k.py", "--data-dir", raw / "flickr8k_kaggle", "--out", out["flickr8k"],
              "--seed", str(seed)])
    return out


def prepare_full() -> dict[str, Path]:
    """Prepare real data from EMOTIC_ROOT / FLICKR8K_ROOT, or use already prepared EMOTIC_ARTEFACTS / FLICKR8K_ARTEFACTS."""
    out = {}
    for name, raw_env, art_env, script in (("emotic", "EMOTIC_ROOT", "EMOTIC_ARTEFACTS", "mat2py.py"),
                                           ("flickr8k", "FLICKR8K_ROOT", "FLICKR8K_ARTEFACTS", "prepare_flickr8k.py")):
        target = Path(os.environ.get(art_env) or REPO / "data" / "full" / name)
        if not (target / "manifest.json").is_file():
            if not os.environ.get(raw_env):
                sys.exit(f"error: profile 'full' needs {raw_env} (the {name} download) or {art_env} (prepared "
                         f"artefacts); neither points at data. See README, section 'Real data'.")
            cmd = [sys.executable, script, "--data-dir", os.environ[raw_env], "--out", target]
            if name == "emotic":
                cmd += ["--descriptions", os.environ.get("EMOTIC_DESCRIPTIONS", "metadata")]
            _run(cmd)
        out[name] = target
    return out


def execute_notebooks(profile: str, artefacts: dict[str, Path], only: list[str] | None, timeout: int) -> list[Path]:
    """Execute notebooks in reading order with nbconvert; save executed copies. Stops at the first failure."""
    import nbformat
    from nbconvert.preprocessors import ExecutePreprocessor

    out_dir = REPO / "outputs" / profile
    (out_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    os.environ.update({"MMER_PROFILE": profile, "MMER_OUTPUT": str(out_dir),
                       "EMOTIC_ARTEFACTS": str(artefacts["emotic"]), "FLICKR8K_ARTEFACTS": str(artefacts["flickr8k"])})
    done = []
    for nb_path in sorted((REPO / "notebooks").glob("*.ipynb")):
        if only and not any(nb_path.name.startswith(o) for o in only):
            continue
        print(f"[notebook] {nb_path.name} ...", end=" ", flush=True)
        t0 = time.perf_counter()
        nb = nbformat.read(nb_path, as_version=4)
        ExecutePreprocessor(timeout=timeout, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(nb_path.parent)}})
        target = out_dir / "notebooks" / nb_path.name
        nbformat.write(nb, target)
        print(f"{time.perf_counter() - t0:.0f} s -> {target.relative_to(REPO)}", flush=True)
        done.append(target)
    return done


def summary_table(profile: str) -> str:
    """The headline numbers every notebook saved in outputs/<profile>/metrics/*.json ('summary' key), one table per
    dataset and part (grouped by the file name, so that each table has few, readable columns)."""
    groups: dict[str, list] = {}
    for path in sorted((REPO / "outputs" / profile / "metrics").glob("*.json")):
        summary = json.loads(path.read_text()).get("summary", {})
        dataset = "Emotic" if "emotic" in path.stem else "Flickr8k" if "flickr" in path.stem else "other"
        dataset += ", robustness" if "robustness" in path.stem else ""
        groups.setdefault(dataset, []).extend((path.stem, model, values) for model, values in summary.items())
    if not groups:
        return "(no metrics written yet)"
    tables = []
    for dataset, rows in groups.items():
        metrics = list(dict.fromkeys(k for _, _, v in rows for k in v))  # first-seen order
        w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
        wm = [max(len(m), 8) for m in metrics]
        head = f"{'notebook':<{w0}}  {'model':<{w1}}  " + "  ".join(f"{m:>{w}}" for m, w in zip(metrics, wm))
        lines = [dataset, head, "-" * len(head)]
        for nb, model, values in rows:
            cells = "  ".join(f"{values[m]:>{w}.2f}" if isinstance(values.get(m), (int, float)) else " " * w
                              for m, w in zip(metrics, wm))
            lines.append(f"{nb:<{w0}}  {model:<{w1}}  {cells}")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_profile = os.environ.get("MMER_PROFILE") or (
        "full" if os.environ.get("EMOTIC_ROOT") or os.environ.get("EMOTIC_ARTEFACTS") else "demo")
    ap.add_argument("--profile", choices=("smoke", "demo", "full"), default=default_profile)
    ap.add_argument("--prepare-only", action="store_true", help="prepare the data and stop")
    ap.add_argument("--notebooks", nargs="*", help="run only notebooks whose names start with these prefixes")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds allowed per notebook cell")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    artefacts = prepare_full() if args.profile == "full" else prepare_synthetic(args.profile)
    print(f"[data] ready in {time.perf_counter() - t0:.0f} s: " + ", ".join(f"{k}={v}" for k, v in artefacts.items()))
    for name, folder in artefacts.items():
        counts = json.loads((folder / "manifest.json").read_text())["splits"]
        print(f"       {name}: " + ", ".join(f"{s} {json.dumps({k: v for k, v in c.items() if k != 'skipped'})}"
                                             for s, c in counts.items()))
    if args.prepare_only:
        return 0
    execute_notebooks(args.profile, artefacts, args.notebooks, args.timeout)
    table = summary_table(args.profile)
    (REPO / "outputs" / args.profile / "summary.txt").write_text(table + "\n", encoding="utf-8")
    print("\n" + table)
    print(f"\nall done in {time.perf_counter() - t0:.0f} s; executed notebooks and figures in outputs/{args.profile}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
