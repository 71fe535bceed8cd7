#!/usr/bin/env python
"""Full-size rehearsal: the researcher's whole run on synthetic data at the real datasets' sizes, timed stage by stage.

    python benchmarks/rehearsal.py --scale 0.02        # a quick check at 2 % of the real sizes (minutes)
    python benchmarks/rehearsal.py                     # the real sizes: give it the machine for over an hour

Stages, each a child process: generate Emotic (train 23,266 / val 3,315 / test 7,203 persons) and Flickr8k (8,091
images x 5 captions, original layout, lists of 6,000 / 1,000 / 1,000) with ``utils.synthetic``; prepare them with
``mat2py.py --descriptions file`` and ``prepare_flickr8k.py``; extract the frozen features exactly as the notebooks
do (``utils.emotic.data`` / ``utils.flickr8k.data``, into a fresh feature cache); execute notebooks 01-04 in the
``full`` profile with nbclient (they then read the warm cache, so their times are training and evaluation).

Printed per stage: wall time, throughput (persons/s or images/s), peak resident memory of the stage's whole process
tree (sampled with psutil; "anon" leaves out file-backed pages, e.g. the memory-mapped arrays, which the kernel can
drop). At the real sizes those arrays are about 6.7 GB for Emotic and 1.2 GB for Flickr8k, and a stage that reads
every row (extraction, and the feature-cache key, which hashes every row) holds them in its RSS until it ends.
The feature stages also measure the image encoder's best rate over batch sizes and layouts (``utils.batching.probe``)
at each input size, right before and right after each extraction call (so both see the same load), and print what
share of that best rate the whole extraction reaches on the distinct images it encodes (reading memmaps, the row
hashes that give the cache key and the repeated images, copies included);
extraction itself runs at the batch size and layout ``utils.batching`` chose for the machine. Those measurements
are the benchmark's, not the researcher's: their seconds are printed and left out of a second total.
Targets for the real sizes on a 2-core CPU: whole rehearsal within 75 minutes, peak memory under 6 GB per stage,
extraction at >= 90 % of the model's best rate. The real sizes need about 13 GB of disk in ``--work`` (checked first)
and, on a quiet 2-core machine, over an hour: run them when nothing else shares the machine, e.g.

    nohup python benchmarks/rehearsal.py --work /big/disk/rehearsal > rehearsal.log 2>&1 &

Settings: the notebooks run the ``full`` profile of ``utils/config.py``; any ``MMER_<SETTING>`` in the environment
reaches them (docs/configuration.md), e.g. ``MMER_EPOCHS=10 MMER_SEEDS=1 MMER_ALIGN_SWEEP='[0.0]'``;
``--epochs`` / ``--seeds`` / ``--bootstrap`` are shortcuts for the three that cost most. ``MMER_PROFILE``,
``MMER_OUTPUT``, ``MMER_CACHE``, ``EMOTIC_ARTEFACTS`` and ``FLICKR8K_ARTEFACTS`` are set by this script (all under
``--work``). Generated and prepared data are kept in ``--work`` and reused by a later run with the same scale and
seed (``--fresh`` regenerates); the feature cache and outputs are always fresh.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

REAL_EMOTIC = {"train": 23266, "val": 3315, "test": 7203}            # persons per split
REAL_FLICKR = {"images": 8091, "train": 6000, "dev": 1000, "test": 1000}  # images; images per split list
NOTEBOOKS = ("01", "02", "03", "04")
LIMIT_S, LIMIT_GB, SHARE_TARGET = 75 * 60, 6.0, 0.90
# disk per person / per image for raw + prepared data (224^2*3 + 128^2*3 arrays, JPEGs), with headroom
DISK_PER_PERSON, DISK_PER_IMAGE = 330_000, 260_000


# ------------------------------------------------------------------------------------------------ sizes
def sizes(scale: float) -> dict:
    """Split sizes at ``scale`` of the real ones, never below what the generators need."""
    from utils.synthetic.scenes import MIN_SPLIT_PERSONS

    emotic = {s: max(MIN_SPLIT_PERSONS[s], round(n * scale)) for s, n in REAL_EMOTIC.items()}
    lists = {s: max(2, round(REAL_FLICKR[s] * scale)) for s in ("train", "dev", "test")}
    n_images = max(sum(lists.values()), round(REAL_FLICKR["images"] * scale))
    return {"emotic": emotic, "flickr_lists": lists, "flickr_images": n_images}


# ------------------------------------------------------------------------------- child stages (in-process)
def child_generate(dataset: str, raw: Path, scale: float, seed: int) -> dict:
    from utils import synthetic

    sz = sizes(scale)
    if dataset == "emotic":
        w = synthetic.make_emotic(raw, "demo", seed, split_persons=sz["emotic"])
        return {"items": sum(s["persons"] for s in w["splits"].values()), "unit": "persons",
                "images": sum(s["records"] for s in w["splits"].values())}
    w = synthetic.make_flickr8k(raw, "demo", seed, layout="original", n_images=sz["flickr_images"],
                                split_images=sz["flickr_lists"])
    return {"items": len(w["images"]), "unit": "images", "captions": 5 * len(w["images"])}


def _best_rate(encoder, side: int) -> tuple[float, int]:
    """The encoder's best images/s over batch sizes and layouts, measured afresh (``utils.batching.probe``), and
    the batch size extraction uses (the machine's cached choice); the encoder is left in that choice's layout."""
    from utils import batching

    shape = (3, side, side)
    best = batching.probe(encoder, shape, encoder.device, lambda cl: batching.set_layout(encoder, cl))
    return best.rate, batching.for_module(encoder, shape).batch


def child_features(dataset: str) -> dict:
    """Features as the notebooks compute them, every image_features / text_features call timed."""
    from utils import config, emotic, encoders, flickr8k

    calls, samples, used = [], {}, {}  # samples: input side -> best rates measured during the stage
    reference_s = 0.0  # seconds spent measuring the best rates: the benchmark's, not the researcher's

    def reference_rate(encoder, side):
        nonlocal reference_s
        t0 = time.perf_counter()
        rate, used[side] = _best_rate(encoder, side)
        reference_s += time.perf_counter() - t0
        samples.setdefault(side, []).append(rate)
        return rate

    def timed(fn, kind):
        def wrapper(encoder, data, *a, **kw):
            side = data.shape[1] if kind == "image" else None
            # the model's best rate right before and right after each call, so both see the machine as it was
            # during the call (a shared or throttled machine changes speed within a minute)
            before = reference_rate(encoder, side) if side else None
            encoded = []  # rows the model ran on: a repeated image or text is encoded once
            hook = encoder.register_forward_hook(lambda module, args, output: encoded.append(len(args[0])))
            t0 = time.perf_counter()
            try:
                out = fn(encoder, data, *a, **kw)
            finally:
                seconds = time.perf_counter() - t0
                hook.remove()
            ref = (before + reference_rate(encoder, side)) / 2 if side else None
            calls.append({"kind": kind, "n": len(data), "encoded": sum(encoded), "side": side, "s": seconds,
                          "ref": ref})
            return out
        return wrapper

    encoders.image_features = timed(encoders.image_features, "image")
    encoders.text_features = timed(encoders.text_features, "text")
    cfg = config.load(dataset)
    t0 = time.perf_counter()
    data = (emotic if dataset == "emotic" else flickr8k).data(cfg)
    wall = time.perf_counter() - t0
    enc = data.image_encoder
    rate = {side: sum(r) / len(r) for side, r in sorted(samples.items())}
    img = [c for c in calls if c["kind"] == "image"]
    txt = [c for c in calls if c["kind"] == "text"]

    def count(part: list[dict], key: str):
        return sum(c[key] for c in part)

    ideal = sum(c["encoded"] / c["ref"] for c in img)  # the seconds the model alone needs for the same rows
    image_s, n_items = count(img, "s"), sum(len(d) for d in data.splits.values())
    return {"items": n_items, "unit": "persons" if dataset == "emotic" else "images",
            "image_rows": count(img, "n"), "image_encoded": count(img, "encoded"), "image_s": image_s,
            "image_rate": count(img, "n") / image_s, "batched_rate": rate, "batch": used, "share": ideal / image_s,
            "texts": count(txt, "n"), "texts_encoded": count(txt, "encoded"), "text_s": count(txt, "s"),
            "encoder": enc.name, "threads": __import__("torch").get_num_threads(), "wall_inner": wall,
            "reference_s": reference_s}


def child_notebook(prefix: str, out: Path, timeout: int) -> dict:
    import nbformat
    from nbclient import NotebookClient

    path = next((REPO / "notebooks").glob(f"{prefix}_*.ipynb"))
    nb = nbformat.read(path, as_version=4)
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    except Exception:
        done = [c for c in nb.cells if c.cell_type == "code" and c.get("execution_count")]
        first = done[-1].source.splitlines()[0] if done and done[-1].source else "(none)"
        print(f"{path.name}: failed in or after code cell {len(done)} ({first!r}); partial notebook in "
              f"{out / 'notebooks' / path.name}", file=sys.stderr)
        raise
    finally:
        nbformat.write(nb, out / "notebooks" / path.name)
    data = "emotic" if prefix in ("01", "03") else "flickr8k"
    art = Path(os.environ["EMOTIC_ARTEFACTS" if data == "emotic" else "FLICKR8K_ARTEFACTS"])
    splits = json.loads((art / "manifest.json").read_text())["splits"]
    key = "persons" if data == "emotic" else "images"
    return {"items": sum(s[key] for s in splits.values()), "unit": key, "notebook": path.name}


# ------------------------------------------------------------------------------------- the parent: stages
class Sampler(threading.Thread):
    """Peak RSS (and RSS minus file-backed/shared pages) summed over a process and all its descendants."""

    def __init__(self, pid: int, every: float = 0.2):
        super().__init__(daemon=True)
        import psutil

        self.root, self.every, self.stop = psutil.Process(pid), every, threading.Event()
        self.peak_rss = self.peak_anon = 0

    def run(self):
        import psutil

        while not self.stop.is_set():
            rss = anon = 0
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            for p in procs:
                try:
                    m = p.memory_info()
                except psutil.Error:
                    continue
                rss += m.rss
                anon += m.rss - m.shared
            self.peak_rss, self.peak_anon = max(self.peak_rss, rss), max(self.peak_anon, anon)
            self.stop.wait(self.every)


def run_stage(name: str, cmd: list[str], env: dict, log: Path) -> dict:
    """Run one stage as a child, sample its memory, parse the RESULT line it prints last."""
    print(f"[{name}] ...", end=" ", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen([str(c) for c in cmd], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=f, text=True)
        sampler = Sampler(proc.pid)
        sampler.start()
        stdout, _ = proc.communicate()
        sampler.stop.set()
        sampler.join()
    wall = time.perf_counter() - t0
    result = next((json.loads(line[7:]) for line in reversed(stdout.splitlines()) if line.startswith("RESULT ")), {})
    r = {"stage": name, "ok": proc.returncode == 0, "wall_s": wall, "peak_rss_gb": sampler.peak_rss / 2**30,
         "peak_anon_gb": sampler.peak_anon / 2**30, "load": os.getloadavg()[1], **result}
    if not r["ok"]:
        tail = log.read_text(errors="replace").strip().splitlines()[-6:]
        r["error"] = "\n      ".join(tail)
    print(f"{wall:.0f} s, peak {r['peak_rss_gb']:.2f} GB" + ("" if r["ok"] else f"  FAILED (log {log})"), flush=True)
    return r


def _stamp_ok(folder: Path, tag: str) -> bool:
    return (folder / ".rehearsal").is_file() and (folder / ".rehearsal").read_text() == tag


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the real sizes (default 1 = real sizes)")
    ap.add_argument("--seed", type=int, default=0, help="generator seed")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default .cache/rehearsal/scale-F)")
    ap.add_argument("--fresh", action="store_true", help="regenerate and re-prepare even if --work holds the data")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding threads of the prep scripts")
    ap.add_argument("--notebooks", nargs="*", default=list(NOTEBOOKS), help="which of 01-04 to execute")
    ap.add_argument("--epochs", type=int, help="sets MMER_EPOCHS (full profile: 40)")
    ap.add_argument("--seeds", type=int, help="sets MMER_SEEDS (full profile: 3 training seeds)")
    ap.add_argument("--bootstrap", type=int, help="sets MMER_BOOTSTRAP (resamples per interval; default 1000)")
    ap.add_argument("--timeout", type=int, default=7200, help="seconds allowed per notebook cell")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)  # internal: run one stage in this process
    args = ap.parse_args(argv)

    if args.child:
        kind, *rest = args.child
        out = {"generate": lambda: child_generate(rest[0], Path(rest[1]), args.scale, args.seed),
               "features": lambda: child_features(rest[0]),
               "notebook": lambda: child_notebook(rest[0], Path(rest[1]), args.timeout)}[kind]()
        print("RESULT " + json.dumps(out), flush=True)
        return 0

    if not 0 < args.scale <= 1:
        ap.error(f"--scale {args.scale}: expected a fraction in (0, 1]")
    work = (args.work or REPO / ".cache" / "rehearsal" / f"scale-{args.scale:g}").resolve()
    sz = sizes(args.scale)
    n_persons, n_images = sum(sz["emotic"].values()), sz["flickr_images"]
    work.mkdir(parents=True, exist_ok=True)
    need, free = n_persons * DISK_PER_PERSON + n_images * DISK_PER_IMAGE, shutil.disk_usage(work).free
    if free < need:
        sys.exit(f"error: {work}: {free / 1e9:.1f} GB free, the rehearsal at scale {args.scale:g} needs about "
                 f"{need / 1e9:.1f} GB; pass --work on a larger disk")
    raw, art, logs = work / "raw", work / "artefacts", work / "logs"
    out, cache = work / "outputs", work / "feature-cache"
    for d in (out, cache):
        shutil.rmtree(d, ignore_errors=True)
    logs.mkdir(exist_ok=True)
    env = {**os.environ, "MMER_PROFILE": "full", "MMER_OUTPUT": str(out), "MMER_CACHE": str(cache),
           "EMOTIC_ARTEFACTS": str(art / "emotic"), "FLICKR8K_ARTEFACTS": str(art / "flickr8k"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    for flag, var in (("epochs", "MMER_EPOCHS"), ("seeds", "MMER_SEEDS"), ("bootstrap", "MMER_BOOTSTRAP")):
        if getattr(args, flag) is not None:
            env[var] = str(getattr(args, flag))
    knobs = {k: v for k, v in env.items() if k.startswith("MMER_") and k not in
             ("MMER_PROFILE", "MMER_OUTPUT", "MMER_CACHE")}
    print(f"rehearsal at scale {args.scale:g}: Emotic persons {sz['emotic']}, Flickr8k {n_images} images, lists "
          f"{sz['flickr_lists']}; work {work}; overrides {knobs or 'none'}; load average {os.getloadavg()[0]:.1f}",
          flush=True)

    me = [sys.executable, str(Path(__file__).resolve()), "--scale", str(args.scale), "--seed", str(args.seed),
          "--timeout", str(args.timeout), "--child"]
    tag = f"{args.scale}:{args.seed}:{json.dumps(sz, sort_keys=True)}"
    results = []
    t_all = time.perf_counter()
    for ds in ("emotic", "flickr8k"):
        if args.fresh or not _stamp_ok(raw / ds, tag):
            shutil.rmtree(raw / ds, ignore_errors=True)
            shutil.rmtree(art / ds, ignore_errors=True)
            results.append(run_stage(f"generate {ds}", [*me, "generate", ds, raw / ds], env, logs / f"gen_{ds}.log"))
            if results[-1]["ok"]:
                (raw / ds / ".rehearsal").write_text(tag)
        else:
            print(f"[generate {ds}] reused {raw / ds} (--fresh regenerates)")
    for ds, cmd in (("emotic", ["mat2py.py", "--data-dir", raw / "emotic", "--out", art / "emotic", "--descriptions",
                                "file", "--descriptions-file", raw / "emotic" / "descriptions.csv"]),
                    ("flickr8k", ["prepare_flickr8k.py", "--data-dir", raw / "flickr8k", "--out", art / "flickr8k"])):
        if not _stamp_ok(art / ds, tag):
            r = run_stage(f"prep {ds}", [sys.executable, *cmd, "--workers", args.workers], env, logs / f"prep_{ds}.log")
            manifest = art / ds / "manifest.json"
            if r["ok"] and manifest.is_file():
                splits = json.loads(manifest.read_text())["splits"]
                key = "persons" if ds == "emotic" else "images"
                r.update(items=sum(s[key] for s in splits.values()), unit=key)
                (art / ds / ".rehearsal").write_text(tag)
            results.append(r)
        else:
            print(f"[prep {ds}] reused {art / ds}")
    for ds in ("emotic", "flickr8k"):
        results.append(run_stage(f"features {ds}", [*me, "features", ds], env, logs / f"features_{ds}.log"))
    for nb in args.notebooks:
        results.append(run_stage(f"notebook {nb}", [*me, "notebook", nb, out], env, logs / f"notebook_{nb}.log"))
    total = time.perf_counter() - t_all
    report(results, total, args.scale)
    return 0 if all(r["ok"] for r in results) else 1


def report(results: list[dict], total: float, scale: float) -> None:
    print(f"\n{'stage':<20}{'wall s':>8}{'items':>8}  {'unit':<8}{'per s':>8}{'peak GB':>9}{'anon GB':>9}"
          f"{'load 5m':>8}  ok")
    for r in results:
        per = f"{r['items'] / r['wall_s']:.1f}" if r.get("items") else ""
        mem_ok = r["peak_rss_gb"] < LIMIT_GB
        print(f"{r['stage']:<20}{r['wall_s']:>8.1f}{r.get('items', ''):>8}  {r.get('unit', ''):<8}{per:>8}"
              f"{r['peak_rss_gb']:>9.2f}{r['peak_anon_gb']:>9.2f}{r['load']:>8.1f}  "
              f"{'yes' if r['ok'] and mem_ok else 'NO'}")
    for r in results:
        if "share" in r:
            rates = ", ".join(f"{s}px {v:.1f}/s" for s, v in r["batched_rate"].items())
            print(f"\n{r['stage']}: {r['image_rows']} image rows ({r['image_encoded']} distinct, encoded) in "
                  f"{r['image_s']:.1f} s = {r['image_rate']:.1f} rows/s at batch {r['batch']} (utils.batching); "
                  f"encoder {r['encoder']} alone at its best batch and layout ({r['threads']} threads), before and "
                  f"after each call: {rates}; extraction reaches {100 * r['share']:.0f} % of it on the distinct "
                  f"images (target >= {100 * SHARE_TARGET:.0f} %: {'OK' if r['share'] >= SHARE_TARGET else 'NO'}); "
                  f"{r['texts']} texts ({r['texts_encoded']} distinct) in {r['text_s']:.1f} s "
                  f"({r['texts'] / max(r['text_s'], 1e-9):.0f} texts/s); the best-rate measurements took "
                  f"{r['reference_s']:.1f} s of the stage, which without them took "
                  f"{r['wall_s'] - r['reference_s']:.1f} s")
    for r in results:
        if not r["ok"]:
            print(f"\n{r['stage']} FAILED:\n      {r.get('error', '')}")
    peak = max((r["peak_rss_gb"] for r in results), default=0.0)
    run = sum(r["wall_s"] for r in results if not r["stage"].startswith("generate"))
    reference = sum(r.get("reference_s", 0.0) for r in results)
    print(f"\ntotal {total / 60:.1f} min at scale {scale:g} (target at scale 1: <= {LIMIT_S / 60:.0f} min), of which "
          f"the researcher's run (prep, features, notebooks; no generation) {run / 60:.1f} min; without the "
          f"benchmark's best-rate measurements {(total - reference) / 60:.1f} and {(run - reference) / 60:.1f} min; "
          "highest stage peak "
          f"{peak:.2f} GB (target < {LIMIT_GB:.0f} GB); load average {os.getloadavg()[0]:.1f}")
    if scale < 1:
        print(f"naive linear extrapolation to scale 1: {total / scale / 60:.0f} min; pessimistic, as it scales the "
              "fixed costs too (imports, encoder loading, kernel starts); run two scales and extrapolate the "
              "difference per stage for an estimate")


if __name__ == "__main__":
    sys.exit(main())
