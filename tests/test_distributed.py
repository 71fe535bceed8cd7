"""The robustness attacks sharded over processes (scripts/robustness.py under torchrun) against the single-process
result, value by value: a killed run resumed by two gloo processes redoes none of its finished shards and gives the
very arrays one process gives; a failing shard, a missing or corrupt shard file stop with their names; the sharded
feature extraction fills the cache with the numbers a single extraction gives.

The torchrun test runs on the smoke Flickr8k data (prepared once, as for the notebooks) with a budget that fools
some images, 2 CPU processes with one thread each; the others run their ranks one after the other in-process (on
the smoke Emotic data, or a toy classifier): a process costs seconds of imports and model loading.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from utils import config, encoders, store
from utils import distributed as D
from utils import robustness as R
from utils.attack import ClassifierPixelPipeline

REPO = Path(__file__).resolve().parent.parent
SCRIPT = str(REPO / "scripts" / "robustness.py")
_spec = importlib.util.spec_from_file_location("robustness_script", SCRIPT)
P = sys.modules["robustness_script"] = importlib.util.module_from_spec(_spec)  # the script: jobs, shards, merge
_spec.loader.exec_module(P)
#: a small attack that fools some of the smoke test images (one at 8 pixels, others at 32): 8 then 32 pixels, 6
#: queries per k; one thread, as in each torchrun process (on a CPU the thread count can change the last bits)
SMALL = {"MMER_PIXELS": "[8, 32]", "MMER_ATTACK_QUERIES": "6", "MMER_ATTACK_THREADS": "1",
         "MMER_ATTACK_METHOD": "sparse",
         "MMER_INFERENCE_BATCH": "32"}  # bit-equal features need equal batches: the ranks' caches probe afresh
ARGS = ["flickr8k", "--rows", "correct", "--shard-size", "1"]


def _env(output: Path, cache: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMER_")}
    env.update(MMER_PROFILE="smoke", MMER_OUTPUT=str(output), MMER_CACHE=str(cache), MMER_DEVICE="cpu",
               OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **SMALL, **extra)
    return env


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Smoke data prepared, features cached and models trained once; the single-process reference attack."""
    from conftest import prepare_data

    root = tmp_path_factory.mktemp("distributed")
    prepare_data()  # the notebooks' smoke data (once per session, under a lock the xdist workers share)
    env = _env(root / "warm", root / "cache")
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if k.startswith("MMER_")})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # one BLAS thread too, as OMP_NUM_THREADS=1 gives each torchrun process: the ridge baseline's solves (numpy)
        # round differently with another thread count, and its fitted arrays are part of the attack's key
        with threadpool_limits(1):
            cfg = config.load("flickr8k")
            job = P.attack_job(cfg, rows="correct")
            reference = P.attack_arrays(R.attack_items(job.pipelines, job.images, job.rows, cfg, chunk=1), job.key,
                                        job.rows)
        yield {"root": root, "cfg": cfg, "job": job, "reference": reference}
    finally:
        torch.set_num_threads(threads)
        os.environ.clear()
        os.environ.update(saved)


def _output_with_models(smoke, name: str) -> Path:
    """A fresh output folder holding the warm run's checkpoints (so no test trains again)."""
    out = smoke["root"] / name
    shutil.copytree(smoke["root"] / "warm" / "checkpoints", out / "checkpoints")
    return out


def _same_arrays(got: dict, want: dict) -> None:
    """Every array byte for byte, except each report's ``cost``: wall-clock seconds, and the images the model saw,
    which include the sparse search's speculative proposals and so grow when fewer items share a call (the
    per-item ``queries`` arrays, compared byte for byte, are the budget)."""
    assert sorted(got) == sorted(want)
    for k, value in want.items():
        a, b = np.asarray(got[k]), np.asarray(value)
        if k.endswith("_cost"):
            continue
        assert (a.dtype, a.shape) == (b.dtype, b.shape), k
        assert a.tobytes() == b.tobytes(), k


def _merged(smoke, out: Path) -> dict:
    path = out / "attacks" / f"flickr8k_{smoke['job'].key}.npz"
    return D.read_npz(path)


def test_a_killed_run_resumed_by_two_gloo_processes_gives_the_single_process_arrays(smoke):
    """One process killed after its first shard; two gloo processes resume it without redoing the finished shards
    (shard i on rank i % 2) and merge the very arrays one process gives. (One launch serves both claims: a resume
    and a two-rank run, each of which used to start its own.)"""
    ref = smoke["reference"]
    assert any((ref[f"{s}_black_box_k_needed"] > 0).any() for s in ("both_maps", "joint_both_towers"))  # some fooled
    out = _output_with_models(smoke, "killed")
    env = _env(out, smoke["root"] / "cache")
    shards = out / "attacks" / f"flickr8k_{smoke['job'].key}.shards-1"
    first = subprocess.Popen([sys.executable, SCRIPT, *ARGS], env=env, cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(shards.glob("shard-*.npz")) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first.poll() is None, ("the run ended before its first shard appeared under the expected key:\n"
                                  + first.stdout.read().decode(errors="replace"))
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    written = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards.glob("shard-*.npz")}
    assert 1 <= len(written) < 4, f"the run was not stopped midway: {sorted(written)}"
    assert not (out / "attacks" / f"flickr8k_{smoke['job'].key}.npz").exists()  # no merged file from a dead run
    for name in written:  # whatever has a final name is complete
        D.read_npz(shards / name)

    second = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", SCRIPT, *ARGS],
                            env=env, cwd=REPO, capture_output=True, text=True, check=False, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    skipped = sorted(int(n[6:11]) for n in written)
    for rank in (0, 1):  # shard i on rank i % 2, each rank skipping its shards already written
        mine = [i for i in range(4) if i % 2 == rank]
        computed, passed = [i for i in mine if i not in skipped], [i for i in mine if i in skipped]
        assert f"[rank {rank}/2] computed shards {computed}, skipped (already written) {passed}" in second.stdout, \
            second.stdout
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards.glob("shard-*.npz")
            if p.name in written} == written  # not rewritten
    _same_arrays(_merged(smoke, out), ref)

    # the notebook's call finds the merged file for its configuration and returns the same objects
    saved = dict(os.environ)
    os.environ["MMER_OUTPUT"] = str(out)
    try:
        job = smoke["job"]
        got = R.pixels_needed(job.pipelines, job.images, job.rows, smoke["cfg"])
        assert list(got) == ["both maps [black-box]", "joint (both towers) [black-box]"]
        _same_arrays(P.attack_arrays(got, job.key, job.rows), ref)
        k_first = got["both maps [black-box]"].schedule[0]
        r = got["both maps [black-box]"].reports[k_first].results[0]
        assert np.array_equal(r.adversarial, R.A.apply_pixels(job.images[[r.row]], r.pixels[None])[0])
        # another configuration (one more query) has no merged file: it is attacked afresh, not loaded
        other = dict(smoke["cfg"], attack_queries=7)
        assert R.attack_key(job.pipelines, job.images, job.rows, other) != job.key
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_sharded_features_match_one_extraction(smoke, monkeypatch):
    """The script's ``--features-only`` work of two ranks: each extracts alternate shards of every split into a fresh
    cache; rank 0's assembled entry is what one extraction computes, and the data loader reads it. The ranks run one
    after the other in-process, rank 1 first so its shards are written when rank 0 assembles (what the barrier
    ensures under torchrun; the test above runs a two-process group)."""
    cache = smoke["root"] / "feature-cache"
    for name, value in _env(smoke["root"] / "features", cache).items():
        if name.startswith("MMER_"):
            monkeypatch.setenv(name, value)
    cfg = config.load("emotic")
    for run in reversed(_ranks(2)):
        P.features_only(run, cfg, 32)
    from utils import data as data_module

    split = data_module.load_emotic("train", Path(os.environ.get("EMOTIC_ARTEFACTS", REPO / "data/smoke/emotic")))
    assert len(split) > 32  # two shards, one per rank
    encoder = encoders.load_image_encoder(cfg["image_encoder"], device="cpu")
    direct = encoders.image_features(encoder, split.context, batch_size=32, cache=False)  # as SMALL pins it
    path = encoders.feature_cache_path(encoder, split.context, cache)
    cached = np.load(path, allow_pickle=False)
    assert cached.tobytes() == direct.tobytes()
    assert encoders.image_features(encoder, split.context, batch_size=32, cache=cache).tobytes() == direct.tobytes()
    distinct = np.fromiter(encoders.RowDigests(split.context).distinct(), np.int64)
    assert len(distinct) < len(split)  # people of one photo share its scene: shards hold each scene once
    first_shard = encoders.feature_cache_path(encoder, split.context[distinct[:32]], cache)
    assert first_shard.is_file()  # each rank's slice is a cache entry of its own: a rerun resumes from it


# ------------------------------------------------------------------------------- in-process, on a toy model
class Brightness(nn.Module):
    """Class 1 once the image's mean brightness passes 0.37, so a few bright pixels can flip a dark image."""

    def forward(self, x):
        m = x.mean((1, 2, 3))
        return torch.stack([torch.zeros_like(m), 200 * (m - 0.37)], 1)


def _toy_job() -> P.AttackJob:
    """Ten 8x8 photos of a toy classifier, all of class 0, some a pixel or two from the boundary."""
    rng = np.random.default_rng(0)
    images = rng.integers(70, 110, (10, 8, 8, 3)).astype(np.uint8)
    cfg = config.load("flickr8k", "smoke", environ={}, pixels=[1, 2, 8], attack_method="sparse", attack_queries=40,
                      attack_threads=1)
    return P.AttackJob(cfg, {"toy": R.keyed(ClassifierPixelPipeline(Brightness(), np.zeros(10, np.int64), 2), "toy")}, images,
                       np.arange(10))


def _ranks(world: int):
    return [D.Launch(r, world, r, torch.device("cpu"), None) for r in range(world)]


def test_shards_of_any_rank_count_merge_to_the_same_arrays(tmp_path, monkeypatch):
    monkeypatch.setenv("MMER_OUTPUT", str(tmp_path))
    job = _toy_job()
    # reference: one search over all ten rows, no sharding or merging code involved
    one = R.A.pixels_needed(job.pipelines["toy"], job.images, job.rows, schedule=job.cfg["pixels"],
                            **R.members(job.cfg)["black-box"])
    whole = P.attack_arrays({"toy [black-box]": one}, job.key, job.rows)
    assert (whole["toy_black_box_k_needed"] > 0).any()
    # no merged file yet: the notebook's call attacks in-process (chunks of attack_batch / 4 items) to the same arrays
    assert not R.attack_results_path(job.cfg, job.key).exists()
    _same_arrays(P.attack_arrays(R.pixels_needed(job.pipelines, job.images, job.rows, job.cfg), job.key, job.rows),
                 whole)
    for world in (1, 3):
        shutil.rmtree(tmp_path / "attacks", ignore_errors=True)
        for run in _ranks(world):  # the ranks one after the other: what torchrun runs side by side
            done = P.attack_shards(job, run, 3)
            assert done["computed"] == list(range(run.rank, 4, world))
        _same_arrays(D.read_npz(P.merge_attack_shards(job, 3)), whole)
    assert P.attack_shards(job, _ranks(1)[0], 3) == {"computed": [], "skipped": [0, 1, 2, 3]}


def test_merge_names_a_missing_or_corrupt_shard_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MMER_OUTPUT", str(tmp_path))
    job = _toy_job()
    P.attack_shards(job, _ranks(1)[0], 4)
    folder = P.attack_shard_dir(job.cfg, job.key, 4)
    final = R.attack_results_path(job.cfg, job.key)
    second = folder / "shard-00001-of-00003.npz"
    good = second.read_bytes()

    second.unlink()
    with pytest.raises(D.ShardError, match="1 of 3 shard.*missing.*shard-00001-of-00003"):
        P.merge_attack_shards(job, 4)
    second.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(D.ShardError, match="shard 1 of 3 .*shard-00001-of-00003.npz is unreadable"):
        P.merge_attack_shards(job, 4)
    arrays = D.read_npz(folder / "shard-00002-of-00003.npz")
    store.write_npz(second, {**arrays, "attack_key": np.array("0123456789abcdef")})  # another configuration's
    with pytest.raises(D.ShardError, match="shard 1 of 3 .*its key is 0123456789abcdef"):
        P.merge_attack_shards(job, 4)
    store.write_npz(second, {k: v for k, v in D.read_npz(folder / "shard-00000-of-00003.npz").items()})
    with pytest.raises(D.ShardError, match="shard 1 of 3 .*its rows are not rows 4..7"):
        P.merge_attack_shards(job, 4)
    assert not final.exists() and not list(final.parent.glob("*.partial"))

    second.write_bytes(good)
    assert P.merge_attack_shards(job, 4) == final and final.is_file()


def test_a_failing_shard_is_named_and_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MMER_OUTPUT", str(tmp_path))
    job = _toy_job()
    real = job.pipelines["toy"].scores

    def scores(x, rows, changed_xy=None):
        if 5 in rows.tolist():
            raise RuntimeError("out of memory")
        return real(x, rows, changed_xy)

    job.pipelines["toy"].scores = scores
    with pytest.raises(D.ShardError, match=r"rank 0: shard 1 of 4 \(test rows \[3, 4, 5\]\) failed.*out of memory"):
        P.attack_shards(job, _ranks(1)[0], 3)
    folder = P.attack_shard_dir(job.cfg, job.key, 3)
    assert sorted(p.name for p in folder.iterdir()) == ["shard-00000-of-00004.npz"]


def test_rows_spec_errors_name_the_rows():
    right = {"a": np.array([True, False, True]), "b": np.array([True, True, True])}
    assert P.rows_from_spec("correct", right, 3, 5, 0).tolist() == [0, 2]
    assert P.rows_from_spec("all", right, 3, 5, 0).tolist() == [0, 1, 2]
    assert P.rows_from_spec("2,0", right, 3, 5, 0).tolist() == [2, 0]
    with pytest.raises(ValueError, match=r"\[3\] outside the 3 test rows"):
        P.rows_from_spec("0,3", right, 3, 5, 0)
    with pytest.raises(ValueError, match="listed twice"):
        P.rows_from_spec("1,1", right, 3, 5, 0)
