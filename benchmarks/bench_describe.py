"""Benchmark (not a test): how fast ``scripts/describe.py`` describes persons, and what all of Emotic would take.

Emotic annotates 34,320 persons in 23,571 images (Kosti et al.); the projection is that count over the measured
rate, for the persons ``mat2py.py`` keeps and the ones it skips alike (an upper bound). Measured per batch size:
the generation alone (``utils.prep.vlm.VLM.describe`` on persons of the smoke synthetic Emotic, model already
loaded, one warm-up batch untimed), then one whole ``describe.py`` run (loading, hashing, cache, merge) at the
largest batch size. Without ``--model`` the model is the tiny random LLaVA of the tests: its rate is the
overhead floor of the pipeline on this machine, not a real model's speed (a random model also rarely stops before
the token limit, as a real one does after its answer). With ``--model`` (hub name or local folder), on CUDA, the
rate is that model's (bf16).

    .venv/bin/python benchmarks/bench_describe.py                                  # tiny LLaVA on the CPU
    .venv/bin/python benchmarks/bench_describe.py --model llava-hf/llava-1.5-7b-hf --batch-sizes 1 8 16 --persons 64
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

EMOTIC_PERSONS = 34_320


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="image-text-to-text model (default: a tiny random LLaVA built here)")
    ap.add_argument("--data-dir", type=Path, help="raw Emotic layout (default: the smoke synthetic data)")
    ap.add_argument("--persons", type=int, default=32, help="persons timed per batch size")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default utils.prep.vlm.MAX_NEW_TOKENS")
    args = ap.parse_args(argv)

    import torch
    import transformers
    from PIL import Image

    from utils import device as devices
    from utils.prep import emotic, vlm
    from utils.prep.io import load_rgb

    # scripts/describe.py is a script, not part of the installed package: load it from its file
    spec = importlib.util.spec_from_file_location("describe", REPO / "scripts" / "describe.py")
    describe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(describe)

    tokens = args.max_new_tokens or vlm.MAX_NEW_TOKENS
    dev = devices.device()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.data_dir is None:
            from utils.synthetic import make_emotic
            make_emotic(tmp / "raw", "smoke", 0)
            args.data_dir = tmp / "raw"
        model_name = args.model
        if model_name is None:
            spec = importlib.util.spec_from_file_location("tiny_models", REPO / "tests" / "tiny_models.py")
            tiny_models = importlib.util.module_from_spec(spec)  # a test fixture, not part of the package
            spec.loader.exec_module(tiny_models)
            model_name = str(tiny_models.make_tiny_llava(tmp / "llava"))
        items = describe.persons(emotic.load_annotations(args.data_dir / "Annotations" / "Annotations.mat"),
                                 emotic.SPLITS, False)
        images, digests, people = args.data_dir / "emotic", {}, []
        for split, rec, p in items:
            skip, box, _ = describe.locate(images, rec, p, digests)
            if not skip:
                people.append((Image.fromarray(load_rgb(images / rec.folder / rec.filename)), box))
        people = (people * (args.persons // max(1, len(people)) + 1))[:args.persons]

        precision = "bf16" if dev.type == "cuda" else "fp32"
        print(f"model {args.model or 'tiny random LLaVA (tests)'} on {dev} ({precision}), "
              f"answers of up to {tokens} new tokens, greedy; torch {torch.__version__}, transformers "
              f"{transformers.__version__}, {torch.get_num_threads()} torch threads, load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        model = vlm.VLM(model_name, dev, max_new_tokens=tokens)
        t = time.perf_counter()
        model.describe(*zip(*people[:1]))  # loads the model; untimed warm-up
        print(f"load + first answer: {time.perf_counter() - t:.1f} s")
        rates = {}
        for bs in args.batch_sizes:
            model.describe(*zip(*people[:bs]))  # warm-up at this shape
            t = time.perf_counter()
            for a in range(0, len(people), bs):
                model.describe(*zip(*people[a:a + bs]))
            seconds = time.perf_counter() - t
            rates[bs] = len(people) / seconds
            print(f"batch {bs:>3}: {len(people)} persons in {seconds:.1f} s = {rates[bs]:.2f} persons/s; "
                  f"Emotic's {EMOTIC_PERSONS:,} persons: {EMOTIC_PERSONS / rates[bs] / 3600:.1f} h on one device")
        best = max(args.batch_sizes)
        if len(rates) > 1:
            print(f"batch {best} vs 1: {rates[best] / rates[min(args.batch_sizes)]:.2f}x the rate")

        t = time.perf_counter()
        code = describe.main(["--data-dir", str(args.data_dir), "--model", model_name, "--out", str(tmp / "d.csv"),
                              "--cache", str(tmp / "cache"), "--max-new-tokens", str(tokens), "--batch-size",
                              str(best), "--limit", str(min(args.persons, len(items)))])
        seconds = time.perf_counter() - t
        assert code == 0
        print(f"whole describe.py run (load, hash, describe, merge) on {min(args.persons, len(items))} persons, "
              f"batch {best}: {seconds:.1f} s")
        print("projection: hours = persons / rate on one device; with torchrun over G devices, about hours / G "
              "(shards are independent; the merge hashes each image once)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
