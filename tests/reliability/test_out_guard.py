"""Issue 9 item 7: ``--out`` is guarded. Files, foreign folders, LeRobot datasets, inputs and unwritable
paths are refused with one line (exit 2); one build at a time holds ``OUT/.motiondata.lock``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import motiondata.pipeline.runner as runner
from motiondata.cli import main
from motiondata.pipeline.preflight import check_out, is_motiondata_store
from motiondata.pipeline.runner import JobResult
from motiondata.store.lock import LOCK_NAME, OutLock, StoreLockedError
from motiondata.usage import UsageError
from tests.factories_pipeline import write_libero_hdf5, write_spec


@pytest.fixture()
def spec(tmp_path: Path) -> Path:
    (tmp_path / "in").mkdir()
    hdf5 = write_libero_hdf5(tmp_path / "in" / "demo.hdf5", episodes=1, steps=8, size=32)
    return write_spec(tmp_path / "spec.yaml", [{"kind": "hdf5", "path": str(hdf5), "name": "lib"}])


@pytest.fixture()
def fake_runner(monkeypatch):
    """run_job stand-in: records the lock it finds and writes the files a store starts with."""
    seen: dict = {}

    def run_job(spec, out, ray_address=None, executor="ray", show_progress=True, **_):
        out = Path(out)
        seen["lock"] = json.loads((out / LOCK_NAME).read_text())
        (out / "shards").mkdir(exist_ok=True)
        (out / "manifest.json").write_text(json.dumps({"format_version": "1.0", "spec_hash": "h"}))
        result = JobResult(out, shards_total=1, shards_built=1, num_episodes=1, num_samples=1)
        result.complete = True
        return result

    monkeypatch.setattr(runner, "run_job", run_job)
    return seen


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def build(spec: Path, out: Path) -> int:
    return main(["build", str(spec), "--out", str(out), "--executor", "local", "-q"])


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_out_that_is_a_file_or_under_a_file_is_refused(tmp_path, capsys, spec, fake_runner):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    assert build(spec, afile) == 2
    assert "is a file; pass a folder" in one_error_line(capsys)
    assert build(spec, afile / "sub" / "out") == 2
    assert "cannot create --out" in one_error_line(capsys)
    assert afile.read_text() == "not a folder"


def test_unwritable_out_is_refused(tmp_path, capsys, spec, fake_runner):
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o500)
    targets = [readonly / "out", Path("/sys/motiondata_out_guard_test")]  # sysfs refuses even root
    unwritable = [t for t in targets if not _can_create(t)]
    if not unwritable:
        pytest.skip("every candidate folder is writable here")
    for target in unwritable:
        assert build(spec, target) == 2
        line = one_error_line(capsys)
        assert str(target) in line and "writ" in line, line  # "not writable" / "a folder you can write to"


def _can_create(path: Path) -> bool:
    try:
        path.mkdir()
    except OSError:
        return False
    path.rmdir()
    return True


def test_foreign_folder_and_lerobot_dataset_are_refused(tmp_path, capsys, spec, fake_runner):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"jpg")
    assert build(spec, foreign) == 2
    assert "not empty and not a motiondata store (holds holiday.jpg)" in one_error_line(capsys)
    lerobot = tmp_path / "lerobot"
    (lerobot / "meta").mkdir(parents=True)
    (lerobot / "meta" / "info.json").write_text("{}")
    assert build(spec, lerobot) == 2
    assert "is a LeRobot dataset (meta/info.json)" in one_error_line(capsys)
    fake_manifest = tmp_path / "other"
    fake_manifest.mkdir()
    (fake_manifest / "manifest.json").write_text('{"name": "some other tool"}')
    assert build(spec, fake_manifest) == 2
    assert sorted(p.name for p in foreign.iterdir()) == ["holiday.jpg"]


def test_out_inside_an_input_is_refused(tmp_path, capsys, fake_runner):
    (tmp_path / "in").mkdir()
    write_libero_hdf5(tmp_path / "in" / "demo.hdf5", episodes=1, steps=8, size=32)
    folder_spec = write_spec(tmp_path / "folder.yaml", [{"kind": "hdf5", "path": str(tmp_path / "in")}])
    assert build(folder_spec, tmp_path / "in" / "store") == 2
    assert "inside the input" in one_error_line(capsys)
    assert build(folder_spec, tmp_path / "in") == 2
    assert one_error_line(capsys)


def test_new_empty_and_own_store_folders_are_accepted(tmp_path, capsys, spec, fake_runner):
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (tmp_path / "new" / "deep", empty):
        assert build(spec, out) == 0, capsys.readouterr().err
        assert is_motiondata_store(out) and not (out / LOCK_NAME).exists()
        assert fake_runner["lock"]["pid"] == os.getpid() and fake_runner["lock"]["host"] == socket.gethostname()
        assert build(spec, out) == 0  # a rerun into its own store resumes


def test_a_live_lock_refuses_a_second_build_naming_the_holder(tmp_path, capsys, spec, fake_runner):
    out = tmp_path / "out"
    out.mkdir()
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "started": "2030-01-01T00:00:00+00:00"}
    (out / LOCK_NAME).write_text(json.dumps(holder))
    assert build(spec, out) == 2
    line = one_error_line(capsys)
    assert f"being built by pid {os.getppid()} on {socket.gethostname()}" in line and "use another --out" in line
    assert json.loads((out / LOCK_NAME).read_text()) == holder  # the holder's lock is untouched
    other_host = {**holder, "pid": dead_pid(), "host": "another-host.example"}
    (out / LOCK_NAME).write_text(json.dumps(other_host))
    assert build(spec, out) == 2  # a PID on another host cannot be checked: refused, never stolen
    assert "another-host.example" in one_error_line(capsys)


def test_a_stale_lock_of_a_dead_pid_is_taken_over_with_a_warning(tmp_path, capsys, caplog, spec, fake_runner):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "started": "x"}))
    assert build(spec, out) == 0
    assert fake_runner["lock"]["pid"] == os.getpid()
    assert any("took over the lock" in r.getMessage() for r in caplog.records)
    assert not (out / LOCK_NAME).exists()


def test_torn_lock_is_refused_while_young_and_taken_over_when_old(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text("")
    with pytest.raises(StoreLockedError, match="is being written"):
        OutLock(out).acquire()
    old = time.time() - 3600
    os.utime(out / LOCK_NAME, (old, old))
    with OutLock(out) as lock:
        assert json.loads((out / LOCK_NAME).read_text()) == lock.info
    assert not (out / LOCK_NAME).exists()


def test_exactly_one_of_many_concurrent_acquirers_wins(tmp_path):
    out = tmp_path / "out"
    barrier, results = threading.Barrier(8), []

    def attempt() -> None:
        barrier.wait()
        try:
            results.append(OutLock(out).acquire())
        except StoreLockedError as exc:
            results.append(exc)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if isinstance(r, OutLock)]
    assert len(winners) == 1 and len(results) == 8
    winners[0].release()
    assert not (out / LOCK_NAME).exists()


def test_release_never_removes_another_builds_lock(tmp_path):
    out = tmp_path / "out"
    lock = OutLock(out).acquire()
    other = {"pid": os.getppid(), "host": socket.gethostname(), "started": "later"}
    (out / LOCK_NAME).write_text(json.dumps(other))
    lock.release()
    assert json.loads((out / LOCK_NAME).read_text()) == other


def test_check_out_is_read_only(tmp_path):
    check_out(tmp_path / "a" / "b")
    assert not (tmp_path / "a").exists()
    with pytest.raises(UsageError):
        (tmp_path / "f").write_text("x")
        check_out(tmp_path / "f")
