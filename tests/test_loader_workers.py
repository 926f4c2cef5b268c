"""Loader workers hand batches over in a shared-memory ring (motiondata.loader.batch_ring): the same batches
as read in-process, slots reused, batches the trainer holds never overwritten, a worker's error or death one
line, nothing left in /dev/shm."""

from __future__ import annotations

import gc
import os
import re
import shutil
import signal
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch

from motiondata.errors import MotionDataError, StoreError
from motiondata.loader import batch_ring
from motiondata.loader.streaming import StreamingLoader
from tests.factories_loader import corrupt_shard, make_store

FIELDS = ["vae.latents", "fast.tokens", "text.embedding", "meta", "motion.zm", "flow.tracks", "flow.valid", "actions"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("store"))  # 12 samples in 3 shards of 4


def reference(store: Path, workers: int, epochs: int, **kw):
    """The batches ``workers`` workers deliver, read in-process: worker w's slot, round-robin."""
    ds = StreamingLoader(store, 3, FIELDS, shuffle_buffer=5, **kw).dataset
    for epoch in range(epochs):
        streams = [ds._indexed_batches(w, workers, epoch, 0) for w in range(workers)]
        for group in zip(*streams):
            yield from group


def assert_equal(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k, v in want.items():
        if isinstance(v, torch.Tensor):
            assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
        else:
            assert got[k] == v, k


def endless(loader: StreamingLoader):
    while True:
        yield from loader


@pytest.mark.parametrize("workers", [1, 2])
def test_worker_batches_equal_in_process_reads_and_come_through_slots(store, workers):
    loader = StreamingLoader(store, 3, FIELDS, num_workers=workers, shuffle_buffer=5)
    count = 0
    for got, want in zip(islice(endless(loader), 3 * len(loader)), reference(store, workers, 3), strict=True):
        assert_equal(got, want)
        count += 1
    assert loader.ring is not None and loader.ring.received == count  # every batch came in a slot, none fell back
    in_process = StreamingLoader(store, 3, FIELDS, shuffle_buffer=5)
    assert sorted(k for b in loader for k in b["__key__"]) == sorted(k for b in in_process for k in b["__key__"])


def test_batches_held_by_the_trainer_are_never_overwritten(store):
    loader = StreamingLoader(store, 3, FIELDS, num_workers=2, shuffle_buffer=5, prefetch_factor=2)
    held = list(islice(endless(loader), 40))  # 20 per worker, far more than its 5 slots
    assert 0 < loader.ring.received < 40  # the rest came through the pipe instead of waiting
    for got, want in zip(held, reference(store, 2, 10), strict=False):
        assert_equal(got, want)
    del held
    gc.collect()
    assert not loader.ring._taken[: loader.ring.slots].all()  # dropped batches freed their slots


def test_transformed_batches_are_shipped_in_slots_too(store):
    loader = StreamingLoader(store, 3, FIELDS, num_workers=2, shuffle_buffer=5, transform=lambda s: s)
    for got, want in zip(loader, reference(store, 2, 1), strict=True):
        assert_equal(got, want)
    assert loader.ring.received == len(loader)


def test_ship_and_unpack_keep_every_dtype_and_fall_back_when_no_slot(monkeypatch):
    class Info:
        id, num_workers = 0, 1

    monkeypatch.setattr(batch_ring, "get_worker_info", lambda: Info())
    ring = batch_ring.BatchRing(1, 1, 4096)
    batch = {"__key__": ["a", "b"], "bf": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3),
             "mask": torch.tensor([True, False]), "empty": torch.zeros((2, 0), dtype=torch.int32),
             "big": torch.ones(2, 3000, dtype=torch.float64)}  # too large for the slot
    sent = batch_ring.ship({k: v for k, v in batch.items() if k != "big"}, ring)
    assert "__slot__" in sent and "bf" not in sent
    again = batch_ring.ship(dict(batch), ring)  # the only slot is taken and this one is too large: pipe
    assert "__arena__" in again and ring.fallbacks == 1
    for shipped in (sent, again):
        got = batch_ring.unpack(shipped, ring=ring)
        for k in got:
            assert got[k] == batch[k] if k == "__key__" else torch.equal(got[k], batch[k]), k
    assert ring._taken[0] == 1
    del got, shipped, sent
    gc.collect()
    assert ring._taken[0] == 0  # the slot's views died: free again


def test_worker_store_error_is_raised_as_is(store, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(store, bad)
    corrupt_shard(bad, 2, "npy")
    with pytest.raises(StoreError) as info:
        list(StreamingLoader(bad, 2, FIELDS, shuffle=False, on_corrupt="raise", num_workers=2))
    assert info.value.shard == "shard-000002" and info.value.key == "ep002_w0000" and "\n" not in str(info.value)


def _boom(sample: dict) -> dict:
    raise ValueError("boom\nsecond line")


def test_worker_bug_is_one_line_naming_the_worker_with_its_traceback_as_a_note(store):
    with pytest.raises(RuntimeError, match="loader worker [01] failed: ValueError: boom") as info:
        next(iter(StreamingLoader(store, 3, FIELDS, num_workers=2, transform=_boom)))
    assert "\n" not in str(info.value) and "_boom" in "".join(info.value.__notes__)


@pytest.mark.timeout(120)
def test_killed_worker_is_one_line_error_not_a_hang(store):
    import psutil

    others = {p.pid for p in psutil.Process().children()}
    loader = StreamingLoader(store, 2, ["vae.latents"], num_workers=2)
    stream = endless(loader)
    next(stream)
    os.kill(min({p.pid for p in psutil.Process().children()} - others), signal.SIGKILL)
    with pytest.raises(MotionDataError, match="worker .* exited unexpectedly.*Fix") as info:
        for _ in range(1000):
            next(stream)
    assert "\n" not in str(info.value)


def _shm_maps(pids: list[int]) -> list[str]:
    lines = []
    for pid in pids:
        try:
            lines += [ln for ln in Path(f"/proc/{pid}/maps").read_text().splitlines()
                      if "/dev/shm/" in ln and not ln.endswith("(deleted)")]  # queue semaphores are unlinked at once
        except OSError:
            pass
    return lines


def test_no_shared_memory_segment_is_left_behind(store):
    import psutil

    shm = Path("/dev/shm")
    before = set(os.listdir(shm)) if shm.is_dir() else set()
    pids = [os.getpid()]
    for kw in ({}, {"transform": lambda s: s}):
        loader = StreamingLoader(store, 3, FIELDS, num_workers=2, shuffle_buffer=5, **kw)
        batches = list(islice(endless(loader), 12))
        pids += [p.pid for p in psutil.Process().children()]
        assert not _shm_maps(pids)  # the ring is an anonymous mapping: no file in /dev/shm at all
        assert np.isfinite(batches[-1]["vae.latents"].float().numpy()).all()
        loader.close()
        del batches
    gc.collect()
    after = set(os.listdir(shm)) if shm.is_dir() else set()
    ours = [n for n in after - before if set(re.split(r"[_.-]", n)) & {str(p) for p in pids}]  # others share /dev/shm
    assert not ours and not _shm_maps([os.getpid()])
