"""Both prep scripts under faults: a disk too small, a disk filled during the run, a hard kill, stale staging folders.

The small raw datasets are the ones tests/test_mat2py.py and tests/test_prepare_flickr8k.py build by hand. A full
disk is simulated without root: ``shutil.disk_usage`` or ``os.posix_fallocate`` patched in-process, and
RLIMIT_FSIZE in a child process (SIGXFSZ ignored there, so an over-long write fails with EFBIG). Expected byte
counts are computed here from the format (np.save of the same shapes), never with the code under test.
"""
from __future__ import annotations

import errno
import json
import math
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

import mat2py
import prepare_flickr8k
from test_mat2py import build_dataset
from test_prepare_flickr8k import make_kaggle
from utils.prep import flickr
from utils.prep import io as prep_io

REPO = Path(__file__).resolve().parents[1]
MARGIN_MIN = 64 * 10**6  # the documented margin: 5% of the arrays, at least 64 MB
Usage = namedtuple("Usage", "total used free")

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="process checks read /proc (Linux)")


# ---------------------------------------------------------------------------------------------------------------
# The two scripts behind one interface


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> dict[str, Path]:
    emotic_root = tmp_path_factory.mktemp("emotic_raw")
    build_dataset(emotic_root)
    flickr_root = tmp_path_factory.mktemp("flickr_raw")
    make_kaggle(flickr_root)
    return {"emotic": emotic_root, "flickr": flickr_root}


SCRIPTS = {"emotic": (mat2py, "mat2py.py"), "flickr": (prepare_flickr8k, "prepare_flickr8k.py")}


def argv(kind: str, raw: dict, out: Path) -> list[str]:
    return ["--data-dir", str(raw[kind]), "--out", str(out), "--workers", "1"]


def run(kind: str, raw: dict, out: Path, capsys) -> tuple[int, str]:
    code = SCRIPTS[kind][0].main(argv(kind, raw, out))
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def reference(raw, tmp_path_factory) -> dict[str, Path]:
    """An uninterrupted run of each script."""
    outs = {}
    for kind in SCRIPTS:
        outs[kind] = tmp_path_factory.mktemp(f"{kind}_reference")
        assert SCRIPTS[kind][0].main(argv(kind, raw, outs[kind])) == 0
    return outs


def previous_output(reference: dict, kind: str, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(reference[kind], out)
    return out


def tree(folder: Path) -> dict[str, object]:
    """Every entry under ``folder`` (hidden ones and sub-folders included, symlinks not followed) -> its content.
    The Emotic manifest's creation time is left out: it differs between two runs by design."""
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            found[rel] = ("symlink", os.readlink(path))
        elif path.is_dir():
            found[rel] = "folder"
        elif path.name == "manifest.json":
            manifest = json.loads(path.read_text())
            manifest.pop("created", None)
            found[rel] = manifest
        else:
            found[rel] = path.read_bytes()
    return found


def staging_folders(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.name.startswith(".staging-"))


# ---------------------------------------------------------------------------------------------------------------
# Space checked before writing


def expected_need(kind: str, raw: dict) -> int:
    """Bytes of every array at full capacity, from np.save of zero arrays of the same shapes (independent)."""
    def npy(shape, dtype) -> int:
        path = raw[kind].parent / f"_probe_{os.getpid()}.npy"
        np.save(path, np.zeros(shape, dtype))
        size = path.stat().st_size
        path.unlink()
        return size

    if kind == "emotic":
        rows = {"train": 10, "val": 2, "test": 2}  # every annotated person of build_dataset, skipped ones included
        return sum(npy((n, 224, 224, 3), np.uint8) + npy((n, 128, 128, 3), np.uint8) + npy((n, 26), np.float32)
                   + npy((n, 3), np.float32) for n in rows.values())
    plan = flickr.plan_splits(flickr.find_source(raw[kind]), seed=0)
    return sum(npy((len(plan.splits[s]), 224, 224, 3), np.uint8) for s in flickr.SPLITS)


@pytest.mark.parametrize("kind", SCRIPTS)
@pytest.mark.parametrize("previous", [False, True], ids=["fresh", "over_previous"])
def test_preflight_stops_before_writing_anything(kind, previous, raw, reference, tmp_path, capsys, monkeypatch):
    out = previous_output(reference, kind, tmp_path) if previous else tmp_path / "out"
    before = tree(out) if previous else None
    need = expected_need(kind, raw)
    margin = max(MARGIN_MIN, math.ceil(0.05 * need))
    asked, decoded = [], []
    real_load = prep_io.load_rgb

    def counting_load(path):
        decoded.append(path)
        return real_load(path)

    monkeypatch.setattr(prep_io, "load_rgb", counting_load)
    monkeypatch.setattr(prepare_flickr8k, "load_rgb", counting_load)
    free = need + margin - 1
    monkeypatch.setattr(shutil, "disk_usage", lambda p: asked.append(Path(p)) or Usage(10**12, 0, free))

    code, err = run(kind, raw, out, capsys)
    assert code == 2
    assert err == (f"error: {out}: needs {(need + margin) / 1e6:.1f} MB, {free / 1e6:.1f} MB free "
                   f"({need / 1e6:.1f} MB of arrays plus a {margin / 1e6:.1f} MB margin); free some space or "
                   f"write to another --out\n")
    assert decoded == [], "no image may be decoded before the space check"
    assert asked and all(out == p or p in out.parents for p in asked)  # the output's own filesystem was asked
    if previous:
        assert tree(out) == before
    else:
        assert not out.exists(), "a refused run creates nothing"

    free = need + margin  # exactly enough
    code, err = run(kind, raw, out, capsys)
    assert code == 0, err
    assert tree(out) == tree(reference[kind])


# ---------------------------------------------------------------------------------------------------------------
# Space running out during the run


@pytest.mark.parametrize("kind, failing_call, file", [
    ("emotic", 6, "val_body_arr.npy"),     # second split: train's four arrays are already written
    ("flickr", 3, "test_images.npy"),      # third split
])
@pytest.mark.parametrize("code_", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_disk_filled_during_the_run(kind, failing_call, file, code_, raw, reference, tmp_path, capsys, monkeypatch):
    out = previous_output(reference, kind, tmp_path)
    before = tree(out)
    calls = []
    real = os.posix_fallocate

    def filling(fd, offset, length):
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        if len(calls) == failing_call:
            raise OSError(code_, os.strerror(code_))
        return real(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", filling)
    code, err = run(kind, raw, out, capsys)
    assert code == 2
    assert Path(calls[-1]).name == file
    assert err == (f"error: {out}: {os.strerror(code_)} while writing {file}; the partial files were removed and "
                   f"the previous output is unchanged (free some space or write to another --out)\n")
    assert tree(out) == before, "no staging folder left, previous output byte-identical"


@pytest.mark.parametrize("kind", SCRIPTS)
def test_write_failing_after_allocation(kind, raw, reference, tmp_path, capsys, monkeypatch):
    """A filesystem that ignored the preallocation (network, copy-on-write) fails on a later write instead."""
    out = previous_output(reference, kind, tmp_path)
    before = tree(out)
    calls = []
    real = prep_io.write_rows

    def failing(path, offset, rows):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, offset, rows)

    monkeypatch.setattr(prep_io, "write_rows", failing)
    code, err = run(kind, raw, out, capsys)
    assert code == 2 and len(calls) == 2
    assert err.startswith(f"error: {out}: No space left on device while writing {Path(calls[-1]).name}; ")
    assert tree(out) == before


def test_csv_write_out_of_space(raw, reference, tmp_path, capsys, monkeypatch):
    """Not only the arrays: a table that cannot be written gives the same clear error."""
    out = previous_output(reference, "emotic", tmp_path)
    before = tree(out)

    def full(path, rows):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(mat2py, "write_csv", full)
    code, err = run("emotic", raw, out, capsys)
    assert code == 2 and err.startswith(f"error: {out}: No space left on device while writing train.csv; ")
    assert tree(out) == before


def _limit_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an over-long write then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("kind", SCRIPTS)
def test_file_size_limit_in_a_child_process(kind, raw, reference, tmp_path):
    """The real scripts, a real kernel refusal (EFBIG under RLIMIT_FSIZE): message, exit 2, nothing changed."""
    out = previous_output(reference, kind, tmp_path)
    before = tree(out)
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / SCRIPTS[kind][1])] + argv(kind, raw, out),
                          capture_output=True, text=True, cwd=REPO, env=env, preexec_fn=_limit_file_size(256_000))
    assert proc.returncode == 2, proc.stderr
    first_array = "train_context_arr.npy" if kind == "emotic" else "train_images.npy"  # 1.2 MB, 2.1 MB
    assert proc.stderr == (f"error: {out}: File too large while writing {first_array}; the partial files were "
                           f"removed and the previous output is unchanged (free some space or write to another "
                           f"--out)\n")
    assert tree(out) == before


# ---------------------------------------------------------------------------------------------------------------
# Hard kill and stale staging folders

SLOW_CHILD = """
import sys, time
import mat2py, prepare_flickr8k
from utils.prep import io

def slow(path, real=io.load_rgb):
    open({stalled!r}, "w").close()  # tells the test that the arrays are allocated and decoding has begun
    time.sleep(120)
    return real(path)

io.load_rgb = prepare_flickr8k.load_rgb = slow
sys.exit({module}.main({argv!r}))
"""


def start_slow_run(kind: str, raw: dict, out: Path) -> tuple[subprocess.Popen, Path]:
    """A real run that stalls on its first image; returns it once its staging folder holds allocated arrays."""
    stalled = out.parent / f"stalled-{out.name}"
    code = SLOW_CHILD.format(module=SCRIPTS[kind][0].__name__, argv=argv(kind, raw, out),
                             stalled=str(stalled))
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO,  # -c imports mat2py from its folder
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "TQDM_DISABLE": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if stalled.exists():
            stages = staging_folders(out)
            assert len(stages) == 1 and (stages[0] / prep_io.OWNER_FILE).is_file()
            return child, stages[0]
        if child.poll() is not None:
            raise AssertionError(f"the slow run ended early: {child.stderr.read()}")
        time.sleep(0.05)
    child.kill()
    raise AssertionError("no staging folder appeared")


def allocated(folder: Path) -> int:
    return sum(p.lstat().st_blocks * 512 for p in folder.iterdir())


@pytest.mark.parametrize("kind", SCRIPTS)
def test_killed_run_is_cleaned_up_by_the_next_run(kind, raw, reference, tmp_path, capsys):
    out = previous_output(reference, kind, tmp_path)
    table = out / ("train.csv" if kind == "emotic" else "train_captions.csv")
    table.write_text("a previous, different output\n")  # the next run must replace it
    before = tree(out)
    child, stage = start_slow_run(kind, raw, out)
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    child.stderr.close()
    assert staging_folders(out) == [stage], "the kill left its staging folder (the fault being fixed)"
    owner = json.loads((stage / prep_io.OWNER_FILE).read_text())
    assert owner["pid"] == child.pid
    assert {k: v for k, v in tree(out).items() if not k.startswith(".staging-")} == before
    freed = allocated(stage)
    assert freed > 1_000_000  # the arrays' space was allocated up front

    code, err = run(kind, raw, out, capsys)
    assert code == 0, err
    assert f"note: removed stale staging folder {stage} (pid {child.pid} on {socket.gethostname()}, " in err
    assert f"no longer running): freed {freed / 1e6:.1f} MB\n" in err
    assert staging_folders(out) == []
    assert tree(out) == tree(reference[kind]), "byte-identical to an uninterrupted run"


def test_staging_folder_of_a_running_process_is_left_alone(raw, reference, tmp_path, capsys):
    out = previous_output(reference, "emotic", tmp_path)
    child, stage = start_slow_run("emotic", raw, out)
    try:
        inside = tree(stage)
        code, err = run("emotic", raw, out, capsys)
        assert code == 0, err
        assert f"note: left {stage} alone (pid {child.pid} on {socket.gethostname()}" in err
        assert "may still be running" in err
        assert staging_folders(out) == [stage] and tree(stage) == inside
    finally:
        child.kill()
        child.wait(30)
        child.stderr.close()
    code, err = run("emotic", raw, out, capsys)  # once it is gone, the next run clears it
    assert code == 0 and f"note: removed stale staging folder {stage}" in err
    assert staging_folders(out) == []


def own_start_ticks() -> int:
    text = Path("/proc/self/stat").read_text()
    return int(text[text.rindex(")") + 2:].split()[19])


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def make_stage(out: Path, name: str, owner: dict | str | None, payload: bytes = b"\0" * 5000) -> Path:
    stage = out / name
    stage.mkdir(parents=True)
    (stage / "train_context_arr.npy").write_bytes(payload)
    if owner is not None:
        text = owner if isinstance(owner, str) else json.dumps(owner)
        (stage / prep_io.OWNER_FILE).write_text(text)
    return stage


def owner(**changes) -> dict:
    """An owner record as this machine's current process would write it, with ``changes``."""
    record = {"mark": prep_io.OWNER_MARK, "pid": os.getpid(), "host": socket.gethostname(),
              "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
              "start_ticks": own_start_ticks(), "created": "2024-01-01T00:00:00+00:00"}
    record.update(changes)
    return record


@pytest.mark.parametrize("case, removed", [
    ("this_process", False),
    ("pid_reused", True),          # the pid is alive, but that process started at another time
    ("pid_gone", True),
    ("rebooted", True),            # another boot id: no process of that boot survives
    ("other_host", False),         # cannot be checked from here
    ("no_start_time", False),      # a writer without /proc: an alive pid counts as running
])
def test_owner_liveness(case, removed, tmp_path):
    changes = {"this_process": {}, "pid_reused": {"start_ticks": own_start_ticks() - 1},
               "pid_gone": {"pid": dead_pid()}, "rebooted": {"boot_id": "00000000-0000-0000-0000-000000000000"},
               "other_host": {"host": socket.gethostname() + "-elsewhere", "pid": dead_pid()},
               "no_start_time": {"start_ticks": None}}[case]
    stage = make_stage(tmp_path, ".staging-abcd1234", owner(**changes))
    found = prep_io.remove_stale_staging(tmp_path)
    assert [(f.path, f.removed) for f in found] == [(stage, removed)]
    assert stage.exists() != removed
    if removed:
        assert found[0].freed >= 5000


def test_only_marked_staging_folders_are_removed(raw, reference, tmp_path, capsys):
    out = previous_output(reference, "flickr", tmp_path)
    gone = {"pid": dead_pid()}
    keep = [
        make_stage(out, ".staging-nowner01", None),                                   # no owner file (old runs)
        make_stage(out, ".staging-badjson1", "{not json"),
        make_stage(out, ".staging-nomark01", {**owner(**gone), "mark": "something else"}),
        make_stage(out, ".staging-Upper001", owner(**gone)),                          # not a name mkdtemp makes
        make_stage(out, "staging-nodot001", owner(**gone)),
        make_stage(out, "mydata", owner(**gone)),
    ]
    with_subfolder = make_stage(out, ".staging-subdir01", owner(**gone))
    (with_subfolder / "nested").mkdir()
    (with_subfolder / "nested" / "keep.txt").write_text("someone's file")
    target = make_stage(tmp_path / "elsewhere", ".staging-target01", owner(**gone))
    (out / ".staging-symlink1").symlink_to(target)                                    # never followed
    (out / ".staging-plainfil").write_text("a file, not a folder")
    stale = make_stage(out, ".staging-stale001", owner(**gone))                      # the one to remove
    before = tree(out)
    before_target = tree(target.parent)

    code, err = run("flickr", raw, out, capsys)
    assert code == 0, err
    after = tree(out)
    assert after == {k: v for k, v in before.items() if not k.startswith(".staging-stale001")}
    assert tree(target.parent) == before_target and target.is_dir()
    assert f"note: removed stale staging folder {stale} " in err
    for folder in keep[:4] + [with_subfolder]:
        if folder.name.startswith(".staging-") and folder.name != ".staging-Upper001":
            assert f"note: left {folder} alone" in err
    assert "holds something other than plain files" in err
    assert f"no {prep_io.OWNER_FILE} of this tool inside" in err
