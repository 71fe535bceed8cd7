"""Work spread over processes started by PyTorch's own launcher, ``torchrun`` (``python -m torch.distributed.run``).

Why no scheduler of our own: ``torchrun`` already starts one process per device, on one or several machines
(``--nnodes`` with a c10d rendezvous), tells each its ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` and stops the
whole group when one process fails. What is left to us is small and lives here:

- :func:`launch` reads that environment, joins the process group (NCCL between GPUs, gloo between CPU processes)
  and picks the device: ``cuda:LOCAL_RANK`` when CUDA is present, else the CPU. Without ``torchrun`` it is a
  group of one, so every entry point runs unchanged as a plain ``python`` command.
- Work is cut into **shards** of consecutive items whose boundaries depend only on the item list and the shard
  size, never on the number of processes; shard ``i`` goes to rank ``i % world``. So a rerun with any number of
  processes can skip the shards a killed run already wrote, and the merged result is the same.
- Files are written under a temporary name and renamed (``utils.results.save_predictions``), so a file under its
  final name is always complete; :func:`read_npz` turns a truncated or foreign file into an error naming it.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["Launch", "launch", "finish", "barrier", "rank_zero_first", "same_on_every_rank", "shard_bounds",
           "shards_of", "read_npz", "ShardError", "sharded_features"]


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


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def launch(timeout_hours: float = 72.0) -> Launch:
    """Join the group ``torchrun`` started (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` from the environment).

    Device: ``cuda:LOCAL_RANK`` when CUDA is available (also exported as ``MMER_DEVICE`` so every loader of the
    package puts its tensors there), else the CPU; ``MMER_DEVICE=cpu`` forces the CPU. Backend: NCCL on GPUs, gloo
    on CPUs. ``timeout_hours`` bounds every collective, the final wait of rank 0 for the slowest rank included:
    a long attack needs a long one (a failed rank does not wait for it: torchrun stops the group).
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}")
    want_cpu = os.environ.get("MMER_DEVICE", "").strip().lower() == "cpu"
    if torch.cuda.is_available() and not want_cpu:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} GPU(s): "
                               f"start at most that many processes per node (--nproc_per_node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        os.environ["MMER_DEVICE"] = str(device)
    else:
        device = torch.device("cpu")
    backend = None
    if world > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=timeout_hours),
                                    **({"device_id": device} if device.type == "cuda" else {}))
    return Launch(rank, world, local_rank, device, backend)


def finish(run: Launch) -> None:
    """Leave the process group (a no-op for a group of one)."""
    if run.backend is not None and dist.is_initialized():
        dist.destroy_process_group()


def barrier(run: Launch) -> None:
    if run.backend is not None:
        dist.barrier()


@contextlib.contextmanager
def rank_zero_first(run: Launch):
    """Rank 0 runs the block first (training a missing model, filling a feature cache), the others after it, so
    they read what it wrote instead of all writing the same files at once."""
    if not run.main:
        barrier(run)
    yield
    if run.main:
        barrier(run)


def same_on_every_rank(run: Launch, text: str, what: str) -> None:
    """Stop when the ranks disagree on ``text`` (e.g. a configuration fingerprint: different data or settings
    on two machines would otherwise mix two experiments in one result)."""
    if run.backend is None:
        return
    raw = np.frombuffer(text.encode().ljust(256, b"\0")[:256], np.uint8)
    mine = torch.from_numpy(raw.copy()).to(run.device)
    every = [torch.empty_like(mine) for _ in range(run.world)]
    dist.all_gather(every, mine)
    texts = [bytes(t.cpu().numpy()).rstrip(b"\0").decode() for t in every]
    if len(set(texts)) > 1:
        raise RuntimeError(f"the ranks disagree on {what}: " + ", ".join(f"rank {r}: {t}" for r, t in
                                                                        enumerate(texts)) +
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
    """Every array of ``path`` (no pickle), or a :class:`ShardError` naming the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"{what} {path} is missing")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except Exception as e:  # zipfile.BadZipFile, ValueError, OSError, EOFError: all mean "not a complete .npz"
        raise ShardError(f"{what} {path} is unreadable ({type(e).__name__}: {e}); delete it and rerun") from e


def sharded_features(run: Launch, encoder, items, shard_size: int, kind: str = "image"):
    """Frozen-encoder features of ``items`` (uint8 photos for ``kind="image"``, strings for ``"text"``) computed by
    every rank on its shards, then assembled by rank 0 into the content-keyed cache of ``utils.encoders`` under
    the key of the whole input: the entry ``emotic.data`` / ``flickr8k.data`` look up. Returns the array on rank 0
    (``None`` elsewhere); a whole input already cached is read, not recomputed.

    Each shard is extracted through ``image_features`` / ``text_features`` and so lands in the cache under its own
    content key: a killed run resumes from the shards already there. ``shard_size`` is rounded up to a multiple of
    the extraction batch, so the batches, hence the numbers, are those of a single extraction of the whole input.
    """
    from . import encoders

    if kind == "image":
        extract, batch = encoders.image_features, 32
    elif kind == "text":
        extract, batch, items = encoders.text_features, 64, list(items)
    else:
        raise ValueError(f"kind must be 'image' or 'text', got {kind!r}")
    path = encoders.feature_cache_path(encoder, items)
    if (whole := encoders.read_cached(path, len(items), encoder.dim)) is not None:
        return whole if run.main else None
    size = -(-shard_size // batch) * batch
    bounds = shard_bounds(len(items), size)
    for i in shards_of(run, len(bounds)):
        a, b = bounds[i]
        extract(encoder, items[a:b], batch_size=batch)
    barrier(run)
    whole = None
    if run.main:  # every slice is a cache hit now
        whole = np.concatenate([extract(encoder, items[a:b], batch_size=batch) for a, b in bounds]) if bounds \
            else np.zeros((0, encoder.dim), np.float32)
        encoders.write_cached(path, whole)
    barrier(run)
    return whole
