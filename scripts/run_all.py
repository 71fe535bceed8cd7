"""The main job: prepare the data, execute every notebook, print one table of all metrics.

    python scripts/run_all.py                  # demo profile on the bundled synthetic data (what `make run` does)
    python scripts/run_all.py --profile smoke  # the tiny CI data
    EMOTIC_ROOT=~/data/emotic FLICKR8K_ROOT=~/data/flickr8k EMOTIC_DESCRIPTIONS=captioner \\
        python scripts/run_all.py --profile full

Synthetic profiles (smoke, demo) generate the raw datasets with ``utils.synthetic`` in the real formats and run the
two prep scripts on them exactly as a user would on the downloads. The ``full`` profile runs the prep scripts on
``EMOTIC_ROOT`` / ``FLICKR8K_ROOT`` (or uses ``EMOTIC_ARTEFACTS`` / ``FLICKR8K_ARTEFACTS`` if already prepared);
Emotic then needs ``EMOTIC_DESCRIPTIONS`` (captioner | file | metadata, with ``EMOTIC_DESCRIPTIONS_FILE`` for file).
Every step is skipped when its outputs are already there, made by the same source (the generator's and the prep
scripts' code digests, ``utils.store``), so a second run only re-executes the notebooks.

Outputs go to ``MMER_OUTPUT`` (default ``outputs/<profile>``): executed notebooks in ``notebooks/``, figures,
metrics, predictions, checkpoints, ``summary.txt`` and ``run.json`` (commit, machine, date). A ``demo`` run also
rewrites the results block of README.md from those saved outputs (``results_block``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import utils.synthetic as fixtures
from utils import batching, config, labels, store

REPO = Path(__file__).resolve().parent.parent

PROFILES = ("smoke", "demo", "full")
README_BEGIN, README_END = "<!-- results:begin -->", "<!-- results:end -->"
DESCRIPTION_SOURCES = ("captioner", "file", "metadata")
DESCRIPTIONS_HELP = """\
error: profile 'full' prepares Emotic from EMOTIC_ROOT={root}, and Emotic has no captions: choose where the text
of each person comes from with EMOTIC_DESCRIPTIONS:
  EMOTIC_DESCRIPTIONS=captioner  a transformers image-captioning model (default Salesforce/blip-image-captioning-base)
                                 run once over the images and cached; costs about a GPU-hour on the full dataset
  EMOTIC_DESCRIPTIONS=file       your own CSV of descriptions, named by EMOTIC_DESCRIPTIONS_FILE=/path/to.csv
                                 (columns in README, 'What the prep scripts write')
  EMOTIC_DESCRIPTIONS=metadata   offline sentences from gender, age, box size and position: they carry no
                                 information about emotions, so text-only and fusion results mean little
"""


def _run(cmd: list, env: dict | None = None) -> None:
    print("$", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], cwd=REPO, check=True, env=env)


def output_dir(profile: str) -> Path:
    """Where the notebooks of this run write: ``MMER_OUTPUT``, else ``outputs/<profile>``."""
    return Path(os.environ.get("MMER_OUTPUT") or REPO / "outputs" / profile).resolve()


def artefact_dirs(profile: str) -> dict[str, Path]:
    """``EMOTIC_ARTEFACTS`` / ``FLICKR8K_ARTEFACTS``, else ``data/<profile>/<dataset>``."""
    return {name: Path(os.environ.get(var) or REPO / "data" / profile / name).resolve()
            for name, var in (("emotic", "EMOTIC_ARTEFACTS"), ("flickr8k", "FLICKR8K_ARTEFACTS"))}


def prepare_synthetic(profile: str, seed: int = 0) -> dict[str, Path]:
    """Generate the raw synthetic datasets for ``profile`` (once) and prepare artefacts from them (once).

    Artefacts go to ``EMOTIC_ARTEFACTS`` / ``FLICKR8K_ARTEFACTS`` when set; a folder there that holds artefacts
    prepared from other data (e.g. the real download) is never overwritten: the run stops instead.
    """
    raw = REPO / "data" / "raw" / profile
    out = artefact_dirs(profile)
    for name, folder in out.items():  # checked first: nothing is generated for a run that cannot proceed
        manifest = folder / "manifest.json"
        if manifest.is_file() and str(raw.resolve()) not in json.dumps(json.loads(manifest.read_text()).get("source")):
            sys.exit(f"error: {manifest}: these {name} artefacts were not prepared from the synthetic {profile} data "
                     f"in {raw}; refusing to overwrite them. Unset {name.upper()}_ARTEFACTS or use --profile full.")
    stamp = raw / ".complete"
    generated = store.key(store.code_digest(fixtures, labels), seed)  # the generator's source: an edit regenerates
    if not (stamp.is_file() and stamp.read_text().strip() == generated):
        print(f"[data] generating synthetic {profile} datasets in {raw}", flush=True)
        shutil.rmtree(raw, ignore_errors=True)  # no stale files from an older generator
        fixtures.make_all(raw, size=profile, seed=seed)
        store.atomic_write(stamp, generated + "\n")
    prep = sorted((REPO / "utils" / "prep").glob("*.py"))
    for name, cmd in (("emotic", ["mat2py.py", "--data-dir", raw / "emotic", "--out", out["emotic"], "--descriptions",
                                  "file", "--descriptions-file", raw / "emotic" / "descriptions.csv"]),
                      ("flickr8k", ["prepare_flickr8k.py", "--data-dir", raw / "flickr8k_kaggle", "--out",
                                    out["flickr8k"], "--seed", str(seed)])):
        done = out[name] / ".prepared"  # the key of the raw data and the prep code these artefacts come from
        key = store.key(generated, store.code_digest(REPO / cmd[0], *prep), [str(c) for c in cmd])
        if not ((out[name] / "manifest.json").is_file() and done.is_file() and done.read_text().strip() == key):
            _run([sys.executable, *cmd])
            store.atomic_write(done, key + "\n")
    return out


def emotic_description_args(environ=None) -> list[str]:
    """mat2py.py arguments for the description source the user chose; stop with the three options when none was."""
    environ = os.environ if environ is None else environ
    source = environ.get("EMOTIC_DESCRIPTIONS", "").strip()
    if not source:
        sys.exit(DESCRIPTIONS_HELP.format(root=environ.get("EMOTIC_ROOT")))
    if source not in DESCRIPTION_SOURCES:
        sys.exit(f"error: EMOTIC_DESCRIPTIONS={source!r}: expected one of {', '.join(DESCRIPTION_SOURCES)}")
    args = ["--descriptions", source]
    if source == "file":
        path = environ.get("EMOTIC_DESCRIPTIONS_FILE")
        if not path or not Path(path).is_file():
            sys.exit(f"error: EMOTIC_DESCRIPTIONS=file needs EMOTIC_DESCRIPTIONS_FILE naming your CSV of "
                     f"descriptions; got {path!r}")
        args += ["--descriptions-file", path]
    return args


def prepare_full() -> dict[str, Path]:
    """Prepare real data from EMOTIC_ROOT / FLICKR8K_ROOT, or use already prepared EMOTIC_ARTEFACTS / FLICKR8K_ARTEFACTS."""
    out = artefact_dirs("full")
    todo = []
    for name, raw_env, art_env, script in (("emotic", "EMOTIC_ROOT", "EMOTIC_ARTEFACTS", "mat2py.py"),
                                           ("flickr8k", "FLICKR8K_ROOT", "FLICKR8K_ARTEFACTS", "prepare_flickr8k.py")):
        if (out[name] / "manifest.json").is_file():
            continue
        if not os.environ.get(raw_env):
            sys.exit(f"error: profile 'full' needs {raw_env} (the {name} download) or {art_env} (prepared "
                     f"artefacts); neither points at data. See README, section 'Real data'.")
        cmd = [sys.executable, script, "--data-dir", os.environ[raw_env], "--out", out[name]]
        if name == "emotic":
            cmd += emotic_description_args()  # checked before any long step starts
        todo.append(cmd)
    for cmd in todo:
        _run(cmd)
    return out


def check_settings() -> None:
    """Resolve both experiments' settings now, so a mistyped MMER_<KNOB> stops the run before data preparation."""
    for experiment in config.EXPERIMENTS:
        try:
            config.load(experiment)
        except (KeyError, ValueError) as err:
            sys.exit(f"error: {err.args[0] if err.args else err}")


# ------------------------------------------------------------------------------------------------- notebooks
def notebooks(only: list[str] | None = None) -> list[Path]:
    """The notebooks in reading order (file name order), optionally only those whose names start with ``only``."""
    return [p for p in sorted((REPO / "notebooks").glob("*.ipynb"))
            if not only or any(p.name.startswith(o) for o in only)]


def execute_notebook(nb_path: Path, target: Path, timeout: int, env: dict | None = None) -> None:
    """Execute one notebook (working directory: its folder) and write the executed copy to ``target``, also when a
    cell fails, so the copy shows the error. ``env``: the kernel's whole environment (default: this process's).
    Raises nbclient's ``CellExecutionError`` (its message holds the failing cell and traceback) or
    ``CellTimeoutError`` when a cell runs longer than ``timeout`` seconds."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(nb_path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(nb_path.parent)}})
    try:
        client.execute(**({} if env is None else {"env": dict(env)}))
    finally:
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, target)


def execute_notebooks(profile: str, artefacts: dict[str, Path], only: list[str] | None, timeout: int,
                      output: Path | None = None) -> list[Path]:
    """Execute notebooks in reading order; save executed copies in ``<output>/notebooks``. Stops at the first
    failure. The kernels inherit the profile, the artefact folders and the output folder through the environment."""
    out_dir = Path(output) if output is not None else output_dir(profile)
    os.environ.update({"MMER_PROFILE": profile, "MMER_OUTPUT": str(out_dir),
                       "EMOTIC_ARTEFACTS": str(artefacts["emotic"]), "FLICKR8K_ARTEFACTS": str(artefacts["flickr8k"])})
    done = []
    for nb_path in notebooks(only):
        print(f"[notebook] {nb_path.name} ...", end=" ", flush=True)
        t0 = time.perf_counter()
        target = out_dir / "notebooks" / nb_path.name
        execute_notebook(nb_path, target, timeout)
        print(f"{time.perf_counter() - t0:.0f} s -> {target}", flush=True)
        done.append(target)
    return done


# ------------------------------------------------------------------------------------------------- reporting
def _metrics_docs(out_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((Path(out_dir) / "metrics").glob("*.json"))]


def _estimate_columns(rows: dict) -> list[str]:
    """Metric columns of a summary table in first-seen order, without their interval bounds."""
    columns = dict.fromkeys(c for values in rows.values() for c in values)
    return [c for c in columns if not c.endswith((" low", " high"))]


def summary_table(out_dir: Path) -> str:
    """The headline numbers every notebook saved in ``<out_dir>/metrics/*.json`` ('summary' key), one plain-text
    table per dataset and part (grouped by the file name, so that each table has few, readable columns)."""
    groups: dict[str, list] = {}
    for doc in _metrics_docs(out_dir):
        name = doc.get("notebook", "?")
        dataset = "Emotic" if "emotic" in name else "Flickr8k" if "flickr" in name else "other"
        dataset += ", robustness" if "robustness" in name else ""
        groups.setdefault(dataset, []).extend((name, model, values) for model, values in doc.get("summary", {}).items())
    if not groups:
        return "(no metrics written yet)"
    tables = []
    for dataset, rows in groups.items():
        metrics = _estimate_columns({(nb, model): v for nb, model, v in rows})
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


def _cell(values: dict, column: str) -> str:
    value = values.get(column)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "" if value is None else str(value)
    digits = 2 if abs(value) < 5 else 1  # VAD errors (about 1 on the 1..10 scale) need their second digit
    low, high = values.get(f"{column} low"), values.get(f"{column} high")
    if isinstance(low, (int, float)) and isinstance(high, (int, float)):
        return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
    return f"{value:.{digits}f}"


def _git_commit() -> str:
    """``git rev-parse --short HEAD``, plus ``+dirty`` when tracked files differ from it; ``unknown`` outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def provenance(profile: str) -> dict:
    """What a reader needs to judge a set of numbers: commit, profile, machine, library versions, date."""
    import torch

    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    return {"commit": _git_commit(), "profile": profile, "cpu": _cpu_model(), "cores": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "device": device, "date": datetime.date.today().isoformat()}


def results_block(out_dir: Path) -> str:
    """The README's results block (the text between the markers), generated from the saved outputs of a ``demo``
    run in ``out_dir``: its ``run.json`` (provenance) and every ``metrics/*.json`` (summary table and findings).
    Nothing in it is typed by hand; ``write_readme_results`` puts it into README.md."""
    out_dir = Path(out_dir)
    run_file = out_dir / "run.json"
    if not run_file.is_file():
        raise FileNotFoundError(f"{run_file} not found: the README block is written from a finished `make run`")
    run = json.loads(run_file.read_text())
    if run.get("profile") != "demo":
        raise ValueError(f"{run_file}: profile {run.get('profile')!r}; the README reports the 'demo' profile only")
    docs = _metrics_docs(out_dir)
    if not docs:
        raise FileNotFoundError(f"{out_dir / 'metrics'}: no metrics JSON; did the notebooks run?")
    lines = [f"Generated by `make run` from the saved `metrics/*.json`: commit `{run['commit']}`, profile "
             f"`{run['profile']}`, {run['cpu']} ({run['cores']} cores), torch {run['torch']}, device "
             f"{run['device']}, {run['date']}. Each cell: estimate [95 % bootstrap interval over test items].", ""]
    for doc in docs:
        summary = doc.get("summary", {})
        columns = _estimate_columns(summary)
        lines += [f"**{doc['notebook']}**", "", "| model | " + " | ".join(columns) + " |",
                  "|---|" + "---|" * len(columns)]
        lines += [f"| {model} | " + " | ".join(_cell(values, c) for c in columns) + " |"
                  for model, values in summary.items()]
        findings = (doc.get("findings") or {}).get("lines", [])
        if findings:
            lines += [""] + [f"- {line}" for line in findings]
        lines.append("")
    return "\n".join(lines)


def write_readme_results(readme: Path, out_dir: Path) -> None:
    """Replace the text between the README's results markers with ``results_block(out_dir)``; the rest of the file
    is kept byte for byte. A README without exactly one pair of markers is an error (nothing is written)."""
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(README_BEGIN) + r"\n.*?" + re.escape(README_END), re.S)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"{readme}: expected one '{README_BEGIN}' ... '{README_END}' block")
    block = results_block(out_dir)
    new = pattern.sub(lambda _: f"{README_BEGIN}\n{block}\n{README_END}", text)
    store.atomic_write(readme, new)


def readme_block(readme: Path) -> str:
    """The text currently between the README's results markers."""
    text = Path(readme).read_text(encoding="utf-8")
    start, end = text.index(README_BEGIN) + len(README_BEGIN) + 1, text.index(README_END)
    return text[start:end].removesuffix("\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_profile = os.environ.get("MMER_PROFILE") or (
        "full" if os.environ.get("EMOTIC_ROOT") or os.environ.get("EMOTIC_ARTEFACTS") else "demo")
    ap.add_argument("--profile", choices=PROFILES, default=default_profile)
    ap.add_argument("--prepare-only", action="store_true", help="prepare the data and stop")
    ap.add_argument("--notebooks", nargs="*", help="run only notebooks whose names start with these prefixes")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds allowed per notebook cell")
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite README.md's results block (demo)")
    args = ap.parse_args(argv)

    os.environ["MMER_PROFILE"] = args.profile
    check_settings()
    t0 = time.perf_counter()
    artefacts = prepare_full() if args.profile == "full" else prepare_synthetic(args.profile)
    print(f"[data] ready in {time.perf_counter() - t0:.0f} s: " + ", ".join(f"{k}={v}" for k, v in artefacts.items()))
    for name, folder in artefacts.items():
        counts = json.loads((folder / "manifest.json").read_text())["splits"]
        print(f"       {name}: " + ", ".join(f"{s} {json.dumps({k: v for k, v in c.items() if k != 'skipped'})}"
                                             for s, c in counts.items()))
    if args.prepare_only:
        return 0
    out_dir = output_dir(args.profile)
    started = provenance(args.profile)  # the commit the notebooks run from, taken before they run
    execute_notebooks(args.profile, artefacts, args.notebooks, args.timeout, out_dir)
    store.write_json(out_dir / "run.json", {**started, "notebooks": [p.name for p in notebooks(args.notebooks)],
                                            "seconds": round(time.perf_counter() - t0),
                                            "inference_batch": batching.recorded()})
    table = summary_table(out_dir)
    store.atomic_write(out_dir / "summary.txt", table + "\n")
    print("\n" + table)
    if args.profile == "demo" and not args.notebooks and not args.no_readme:
        write_readme_results(REPO / "README.md", out_dir)
        print(f"\nREADME.md results block rewritten from {out_dir}")
    print(f"\nall done in {time.perf_counter() - t0:.0f} s; executed notebooks and figures in {out_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
