"""The one writer and the content keys: whole files or none, and keys that move with the code."""
import hashlib
import json
import math
import os

import numpy as np
import pytest
import torch

from utils import store


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "a.json"
    store.write_json(path, {"x": 1})

    def broken(f):
        f.write(b"{\"x\": ")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed"):
        store.atomic_write(path, broken)
    assert json.loads(path.read_text()) == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no temporary left behind


def test_temporary_names_are_unique_per_call(tmp_path, monkeypatch):
    seen = []
    real = os.replace
    monkeypatch.setattr(store.os, "replace", lambda a, b: (seen.append(str(a)), real(a, b)))
    for _ in range(3):
        store.atomic_write(tmp_path / "same.txt", "x")
    assert len(set(seen)) == 3 and all(f".{os.getpid()}." in s for s in seen)


def test_json_is_strict_and_values_survive(tmp_path):
    path = store.write_json(tmp_path / "m.json", {"ap": [np.float32(0.5), float("nan")], "n": np.int64(3),
                                                   "arr": np.arange(3), "inf": math.inf})
    assert json.loads(path.read_text()) == {"ap": [0.5, None], "n": 3, "arr": [0, 1, 2], "inf": None}


def test_npz_round_trip_and_object_arrays_refused(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.array(["x", "yz"])}
    back = store.read_npz(store.write_npz(tmp_path / "p.npz", arrays))
    assert back.keys() == arrays.keys() and all(np.array_equal(back[k], arrays[k]) for k in arrays)
    with pytest.raises(ValueError, match=r"p2\.npz.*'o'.*object"):
        store.write_npz(tmp_path / "p2.npz", {"o": np.array([{}, 1], dtype=object)})
    assert not (tmp_path / "p2.npz").exists()


def test_state_round_trip(tmp_path):
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    store.load_state(store.save_state(tmp_path / "w.pt", a), b)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_keys_distinguish_parts_and_arrays():
    assert store.key({"a": 1, "b": 2}) == store.key({"b": 2, "a": 1})
    assert store.key({"a": 1}) != store.key({"a": 2})
    x = np.zeros(4, np.float32)
    assert store.key(x) != store.key(x.astype(np.float64)) != store.key(x.reshape(2, 2))
    assert store.key("ab", "c") != store.key("a", "bc")


def test_code_digest_moves_with_an_edit(tmp_path):
    src = tmp_path / "compute.py"
    src.write_text("def f(x):\n    return x + 1\n")
    before = store.code_digest(src)
    assert store.code_digest(src) == before
    src.write_text("def f(x):\n    return x + 2\n")
    assert store.code_digest(src) != before


def test_code_digest_of_a_function_covers_its_module_and_a_package_its_files():
    from utils import attack, metrics
    from utils.attack import sparse
    assert store.code_digest(metrics.emotic_metrics) == store.code_digest(metrics)
    assert store.code_digest(attack) == store.code_digest(*sorted(os.path.join(os.path.dirname(sparse.__file__), f)
                                                                   for f in os.listdir(os.path.dirname(sparse.__file__))
                                                                   if f.endswith(".py")))


def test_a_remembered_digest_is_read_not_recomputed(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "RACY_SECONDS", 0.0)
    np.save(tmp_path / "a.npy", np.arange(12, dtype=np.uint8).reshape(3, 4))
    mm = np.load(tmp_path / "a.npy", mmap_mode="r")
    calls = []

    def compute(a):
        calls.append(1)
        return store.digest(np.asarray(a))

    assert store.remembered_digest(mm, tmp_path / "c") is None  # nothing remembered, nothing computed
    first = store.remembered_digest(mm, tmp_path / "c", compute)
    assert store.remembered_digest(np.load(tmp_path / "a.npy", mmap_mode="r"), tmp_path / "c", compute) == first
    assert len(calls) == 1
    (memo,) = (tmp_path / "c" / "digests").iterdir()
    memo.write_text("not a digest")  # a damaged memo is recomputed, never trusted
    assert store.remembered_digest(mm, tmp_path / "c", compute) == first and len(calls) == 2
    assert store.remembered_digest(np.asarray(mm), tmp_path / "c", compute) == first and len(calls) == 3  # in memory
    assert store.file_sha256(tmp_path / "a.npy") == hashlib.sha256((tmp_path / "a.npy").read_bytes()).hexdigest()
