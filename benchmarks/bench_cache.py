"""Encoder throughput and feature-cache speed-up (a benchmark that prints figures, not a test).

    python benchmarks/bench_cache.py [--images 256] [--texts 2000] [--batch 32]

Prints: MobileNetV2 images/s at 224 x 224 in the default (contiguous NCHW) layout and in ``channels_last``, MiniLM
sentences/s, and for ``image_features`` / ``text_features`` the cold (compute + write) and warm (hash + read) times
and their ratio. The issue asks for a cache hit at least 20x faster than the cold run. The cache goes to a
temporary folder, so the repository's cache is left alone.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from utils import encoders as E
from utils.device import device

WORDS = ("a man woman child dog smiles runs sits near the beach park street with red blue ball happy "
         "sad crowd looks at camera while holding small big old young two three people on grass").split()


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def image_rate(enc, batch: torch.Tensor, channels_last: bool, repeats: int) -> float:
    """Images/s of the bare forward pass, best of ``repeats`` after one warm-up."""
    enc.channels_last = channels_last
    enc.backbone.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    x = batch.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    with torch.inference_mode():
        enc(x)
        best = min(timed(lambda: enc(x))[1] for _ in range(repeats))
    return len(batch) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256, help="images for the cache timing (224 x 224)")
    ap.add_argument("--texts", type=int, default=2000, help="sentences for the cache timing")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    # The figures scale with how busy the machine is: print the load so a reader can judge them.
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device()}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    enc = E.load_image_encoder("mobilenet_v2")
    batch = torch.rand(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    if enc.device.type == "cpu":
        plain = image_rate(enc, batch, channels_last=False, repeats=args.repeats)
        last = image_rate(enc, batch, channels_last=True, repeats=args.repeats)
        print(f"mobilenet_v2 224x224 batch {args.batch}: {plain:6.1f} img/s contiguous, "
              f"{last:6.1f} img/s channels_last ({last / plain:.2f}x)")

    txt = E.load_text_encoder()
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(6, 18))) for _ in range(args.texts)]

    with tempfile.TemporaryDirectory() as cache:
        os.environ["MMER_CACHE"] = cache
        imgs = rng.integers(0, 256, (args.images, 224, 224, 3), dtype=np.uint8)
        cold, t_cold = timed(lambda: E.image_features(enc, imgs, batch_size=args.batch))
        warm, t_warm = timed(lambda: E.image_features(enc, imgs, batch_size=args.batch))
        assert np.array_equal(cold, warm)
        print(f"image_features {args.images} images: cold {t_cold:7.2f} s ({args.images / t_cold:6.1f} img/s), "
              f"warm {t_warm * 1e3:7.1f} ms, speed-up {t_cold / t_warm:7.0f}x")

        cold, t_cold = timed(lambda: E.text_features(txt, texts))
        warm, t_warm = timed(lambda: E.text_features(txt, texts))
        assert np.array_equal(cold, warm)
        print(f"text_features {args.texts} sentences: cold {t_cold:7.2f} s ({args.texts / t_cold:6.1f} sent/s), "
              f"warm {t_warm * 1e3:7.1f} ms, speed-up {t_cold / t_warm:7.0f}x")

        # hashing cost bounds the warm time on big inputs: measured on a memmap, as the notebooks use it
        big = Path(cache) / "big.npy"
        mm = np.lib.format.open_memmap(big, mode="w+", dtype=np.uint8, shape=(2000, 224, 224, 3))
        mm[:] = 7
        mm.flush()
        mm = np.load(big, mmap_mode="r", allow_pickle=False)
        _, t_hash = timed(lambda: E.RowDigests(mm).whole(wait=True))
        print(f"content hash of a {mm.nbytes / 2**20:.0f} MiB memmap: {t_hash:.2f} s "
              f"({mm.nbytes / 2**20 / t_hash:.0f} MiB/s)")


if __name__ == "__main__":
    main()
