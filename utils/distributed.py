"""Work over the processes ``torchrun`` starts: the group, shards, files a rank can trust (docs/distributed.md)."""

import contextlib
import datetime
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from . import encoders, store


class ShardError(RuntimeError):
    """A shard that failed, is missing or cannot be read; the message names it."""


@dataclass(frozen=True)
class Launch:
    """Where this process stands in the group started by ``torchrun`` (a group of one without it)."""
    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: a group of one, no process group was created

    @property
    def main(self) -> bool:
        return self.rank == 0

    def log(self, message: str) -> None:
        print(f"[rank {self.rank}/{self.world}] {message}", flush=True)


def launch(timeout_hours: float = 72.0) -> Launch:
    """Join the group ``torchrun`` started, on ``cuda:LOCAL_RANK`` or the CPU; ``timeout_hours`` bounds collectives."""
    env = {k: os.environ.get(k) or d for k, d in (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0"))}
    if not all(v.isdigit() for v in env.values()):
        raise ValueError(f"{env}: WORLD_SIZE, RANK and LOCAL_RANK (set by torchrun) must be integers")
    world, rank, local_rank = (int(v) for v in env.values())
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}")
    device = torch.device("cpu")
    if torch.cuda.is_available() and os.environ.get("MMER_DEVICE", "").strip().lower() != "cpu":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} GPU(s): "
                               f"start at most that many processes per node (--nproc_per_node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        os.environ["MMER_DEVICE"] = str(device)
    backend = ("nccl" if device.type == "cuda" else "gloo") if world > 1 else None
    if backend is not None and not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=timeout_hours),
                                **({"device_id": device} if device.type == "cuda" else {}))
    return Launch(rank, world, local_rank, device, backend)


def finish(run: Launch) -> None:
    if run.backend is not None and dist.is_initialized():
        dist.destroy_process_group()


def barrier(run: Launch) -> None:
    if run.backend is not None:
        dist.barrier()


@contextlib.contextmanager
def rank_zero_first(run: Launch):
    """Rank 0 runs the block first (training a missing model), the others then read what it wrote."""
    if not run.main:
        barrier(run)
    yield
    if run.main:
        barrier(run)


def same_on_every_rank(run: Launch, text: str, what: str) -> None:
    """Stop when the ranks disagree on ``text`` (a configuration fingerprint): else two experiments would mix."""
    if run.backend is None:
        return
    texts = [None] * run.world
    dist.all_gather_object(texts, text)
    if len(set(texts)) > 1:
        raise RuntimeError(f"the ranks disagree on {what}: {', '.join(f'rank {r}: {t}' for r, t in enumerate(texts))}"
                           " (same settings, data, caches and checkpoints on every machine?)")


def shard_bounds(n_items: int, shard_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each shard: consecutive items, ``shard_size`` each (the last may be shorter)."""
    if shard_size < 1:
        raise ValueError(f"shard size must be at least 1, got {shard_size}")
    return [(a, min(a + shard_size, n_items)) for a in range(0, n_items, shard_size)]


def shards_of(run: Launch, n_shards: int) -> list[int]:
    """The shards this rank works on: ``i % world == rank`` (round robin, so every rank gets early and late ones)."""
    return list(range(run.rank, n_shards, run.world))


def read_npz(path: Path, what: str = "file") -> dict[str, np.ndarray]:
    """``store.read_npz``, or a :class:`ShardError` naming the file and what is wrong with it."""
    if not Path(path).is_file():
        raise ShardError(f"{what} {path} is missing")
    try:
        return store.read_npz(path)
    except Exception as e:  # zipfile.BadZipFile, ValueError, OSError, EOFError: all mean "not a complete .npz"
        raise ShardError(f"{what} {path} is unreadable ({type(e).__name__}: {e}); delete it and rerun") from e


def sharded_features(run: Launch, encoder, items, shard_size: int, kind: str = "image"):
    """Features of ``items`` (photos or texts), each rank caching its shards of the distinct photos (batched as one
    extraction batches them: a repeated photo is encoded once), rank 0 assembling and returning them."""
    extract, batch = {"image": (encoders.image_features, 32), "text": (encoders.text_features, 64)}[kind]
    items = items if kind == "image" else np.array(list(items), dtype=object)
    path = encoders.feature_cache_path(encoder, items)
    if (whole := encoders.read_cached(path, len(items), encoder.dim)) is not None:
        return whole if run.main else None
    rows = encoders.RowDigests(items) if kind == "image" else None
    keep = np.arange(len(items)) if rows is None else np.fromiter(rows.distinct(), np.int64)
    bounds = shard_bounds(len(keep), -(-shard_size // batch) * batch)
    for i in shards_of(run, len(bounds)):
        extract(encoder, items[keep[bounds[i][0]:bounds[i][1]]], batch_size=batch)
    barrier(run)
    if run.main:  # every slice is a cache hit now
        whole = np.zeros((len(items), encoder.dim), np.float32)
        for a, b in bounds:
            whole[keep[a:b]] = extract(encoder, items[keep[a:b]], batch_size=batch)
        store.write_npy(path, whole if rows is None else rows.copy_repeats(whole))
    barrier(run)
    return whole
