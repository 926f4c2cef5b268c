"""Streaming loader: coverage, determinism, rank/worker split, resume, corrupt shards, collation, fsspec."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch

from motiondata.errors import StoreError
from motiondata.loader.collate import collate_samples
from motiondata.loader.streaming import StreamingLoader, resolve_shards, shuffle_order, slot_runs
from motiondata.loader.transfer import DevicePrefetcher, to_device
from tests.factories_loader import corrupt_shard, make_store, store_keys

FIELDS = ["vae.latents", "fast.tokens", "text.embedding", "meta"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("store"))  # 12 samples in 3 shards of 4


def keys_of(loader, limit=None) -> list[list[str]]:
    out = []
    for batch in loader:
        out.append(batch["__key__"])
        if limit is not None and len(out) == limit:
            break
    return out


def flat(batches):
    return [k for b in batches for k in b]


def test_one_epoch_covers_every_sample_once(store):
    loader = StreamingLoader(store, 3, FIELDS, shuffle_buffer=5)
    batches = keys_of(loader)
    assert len(batches) == len(loader) == 4
    assert sorted(flat(batches)) == sorted(store_keys(store))
    assert loader.epoch == 1 and loader.batches == 0


def test_order_is_deterministic_per_seed_and_epoch(store):
    first = keys_of(StreamingLoader(store, 2, FIELDS, seed=3))
    assert first == keys_of(StreamingLoader(store, 2, FIELDS, seed=3))
    assert first != keys_of(StreamingLoader(store, 2, FIELDS, seed=4))
    loader = StreamingLoader(store, 2, FIELDS, seed=3)
    epoch0, epoch1 = keys_of(loader), keys_of(loader)
    assert epoch0 == first and epoch1 != epoch0 and sorted(flat(epoch1)) == sorted(flat(epoch0))
    assert flat(keys_of(StreamingLoader(store, 2, FIELDS, shuffle=False))) == store_keys(store)


def test_reads_only_requested_fields(store):
    batch = next(iter(StreamingLoader(store, 2, ["motion.zm"])))
    assert set(batch) == {"__key__", "motion.zm"}
    assert batch["motion.zm"].dtype == torch.float16 and tuple(batch["motion.zm"].shape) == (2, 4, 1, 8)


@pytest.mark.parametrize("world_size", [2, 4, 5])
def test_ranks_get_equal_disjoint_batches_never_empty(store, world_size):
    per_rank = [keys_of(StreamingLoader(store, 2, FIELDS, rank=r, world_size=world_size)) for r in range(world_size)]
    counts = {len(b) for b in per_rank}
    assert len(counts) == 1 and counts.pop() >= 1  # 3 shards, 4 or 5 ranks: split by samples
    everything = flat(flat(per_rank))
    assert len(everything) == len(set(everything))


def test_wrap_pads_instead_of_dropping(store):
    assert len(StreamingLoader(store, 4, FIELDS, rank=0, world_size=4, partial="auto")) == 1
    with pytest.raises(StoreError, match="partial=.wrap."):
        len(StreamingLoader(store, 4, FIELDS, rank=0, world_size=4))
    per_rank = [keys_of(StreamingLoader(store, 4, FIELDS, rank=r, world_size=4, partial="wrap")) for r in range(4)]
    assert [len(b) for b in per_rank] == [1, 1, 1, 1]
    assert set(flat(flat(per_rank))) == set(store_keys(store))


def test_workers_split_equally_and_cover_the_store(store):
    loader = StreamingLoader(store, 2, FIELDS, num_workers=2, shuffle_buffer=3)
    batches = keys_of(loader)
    assert len(batches) == len(loader) == 6
    assert sorted(flat(batches)) == sorted(store_keys(store))


@pytest.mark.parametrize("workers,stop_after", [(0, 3), (2, 3), (2, 4), (0, 6), (0, 8)])
def test_resume_mid_epoch_gives_the_uninterrupted_order(store, workers, stop_after):
    def make():
        return StreamingLoader(store, 2, FIELDS, num_workers=workers, shuffle_buffer=4, seed=7)

    reference = make()
    uninterrupted = keys_of(reference) + keys_of(reference)  # two epochs
    first = make()
    got = []
    while len(got) < stop_after:
        got.extend(keys_of(first, limit=stop_after - len(got)))
    state = first.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    while len(got) < len(uninterrupted):
        got.extend(keys_of(resumed))
    assert got == uninterrupted


def test_load_state_dict_rejects_other_settings(store):
    state = StreamingLoader(store, 2, FIELDS).state_dict()
    with pytest.raises(ValueError, match="batch_size"):
        StreamingLoader(store, 3, FIELDS).load_state_dict(state)


@pytest.mark.parametrize("how", ["truncate", "garbage", "npy"])
def test_corrupt_shard_is_reported_and_skipped(store, tmp_path, caplog, how):
    bad = tmp_path / "bad"
    shutil.copytree(store, bad)
    corrupt_shard(bad, 1, how)
    with caplog.at_level(logging.WARNING, logger="motiondata.loader.streaming"):
        batches = keys_of(StreamingLoader(bad, 2, FIELDS, shuffle=False))
    assert len(batches) == 6  # equal batch counts survive: stand-ins from the same batch
    assert "shard-000001" in caplog.text and "key" in caplog.text
    assert set(flat(batches)) < set(store_keys(store))


def test_corrupt_shard_raises_by_policy(store, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(store, bad)
    corrupt_shard(bad, 2, "npy")
    with pytest.raises(StoreError) as info:
        keys_of(StreamingLoader(bad, 2, FIELDS, shuffle=False, on_corrupt="raise"))
    assert info.value.shard == "shard-000002" and info.value.key == "ep002_w0000"


def test_missing_shard_file_is_named(store, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(store, bad)
    (bad / "shards" / "shard-000000.tar").unlink()
    with pytest.raises(StoreError, match="shard-000000"):
        keys_of(StreamingLoader(bad, 2, FIELDS, on_corrupt="raise"))


def test_fsspec_url_and_glob_sources(store):
    mem = fsspec.filesystem("memory")
    for path in sorted(Path(store).rglob("*")):
        if path.is_file() and "episodes.zarr" not in path.parts:
            mem.pipe(f"/loadertest/{path.relative_to(store)}", path.read_bytes())
    remote = flat(keys_of(StreamingLoader("memory://loadertest", 2, FIELDS, shuffle=False)))
    assert remote == store_keys(store)
    shards = resolve_shards(f"{store}/shards/shard-*.tar")
    assert [s.num_samples for s in shards] == [4, 4, 4]
    assert flat(keys_of(StreamingLoader(f"{store}/shards/shard-*.tar", 2, FIELDS, shuffle=False))) == store_keys(store)


def test_shuffle_order_is_a_bounded_permutation():
    order = shuffle_order(100, 8, np.random.default_rng(0))
    assert sorted(order) == list(range(100))
    assert all(order[p] < p + 8 for p in range(100))
    assert list(shuffle_order(5, 1, np.random.default_rng(0))) == [0, 1, 2, 3, 4]


def test_slot_runs_split_shards_by_samples(store):
    shards = resolve_shards(store)
    assert slot_runs(shards, [2, 0, 1], 3, 9) == [(2, 3, 4), (0, 0, 4), (1, 0, 1)]
    assert slot_runs(shards, [0, 1, 2], 10, 14) == [(2, 2, 4), (0, 0, 2)]  # wraps around


def test_collate_pads_tokens_with_a_mask():
    samples = [{"__key__": "a", "fast.tokens": np.array([5, 6, 7], np.int32), "x": np.zeros(2, np.float16),
                "meta": {"i": 0}},
               {"__key__": "b", "fast.tokens": np.array([9], np.int32), "meta": {"i": 1}}]
    batch = collate_samples(samples, pad_id=0)
    assert batch["fast.tokens"].tolist() == [[5, 6, 7], [9, 0, 0]]
    assert batch["fast.tokens.mask"].tolist() == [[True, True, True], [True, False, False]]
    assert batch["fast.tokens.length"].tolist() == [3, 1]
    assert batch["x.present"].tolist() == [True, False] and batch["x"].dtype == torch.float16
    assert batch["meta"] == [{"i": 0}, {"i": 1}] and batch["__key__"] == ["a", "b"]
    with pytest.raises(StoreError, match="only the first axis"):
        collate_samples([{"y": np.zeros((2, 3))}, {"y": np.zeros((2, 4))}])


def test_device_prefetcher_passes_batches_through_on_cpu(store):
    loader = StreamingLoader(store, 2, FIELDS, device="cpu")
    batch = next(iter(loader))
    assert batch["vae.latents"].device.type == "cpu"
    assert list(DevicePrefetcher([{"a": torch.ones(1)}], "cpu"))[0]["a"].item() == 1


@pytest.mark.gpu
def test_cuda_prefetch_moves_pinned_batches(store):
    loader = StreamingLoader(store, 2, FIELDS, device="cuda", num_workers=1)
    batches = list(loader)
    assert all(b["vae.latents"].is_cuda for b in batches)
    assert to_device({"a": torch.ones(2)}, "cuda")["a"].is_cuda


# ----------------------------------------------------------------------------- offset index, selection (issue 13)

def _equal_batches(a, b) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k, v in x.items():
            assert (torch.equal(v, y[k]) and v.dtype == y[k].dtype) if isinstance(v, torch.Tensor) else v == y[k], k


@pytest.mark.parametrize("workers", [0, 2])
def test_offset_index_batches_equal_the_sequential_reader(store, workers):
    fields = FIELDS + ["motion.zm", "flow.tracks", "flow.valid", "actions"]
    _equal_batches(StreamingLoader(store, 3, fields, num_workers=workers, shuffle_buffer=5),
                   StreamingLoader(store, 3, fields, num_workers=workers, shuffle_buffer=5, fast=False))


def test_member_index_comes_from_the_manifest_and_a_stale_one_is_ignored(store, tmp_path, monkeypatch):
    import json

    from motiondata.loader import member_index
    from motiondata.store import layout
    from motiondata.store.shards import iter_shard, write_shard

    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    samples = list(iter_shard(layout.shard_tar(copy, 0)))
    info = write_shard(layout.shard_tar(copy, 0), samples)
    manifest = json.loads(layout.shard_manifest(copy, 0).read_text())
    layout.shard_manifest(copy, 0).write_text(json.dumps({**manifest, "members": info["members"], "bytes": info["bytes"]}))
    scanned = member_index.scan_members(str(layout.shard_tar(copy, 0)))
    assert [(n, o, s) for n, o, s in scanned][:3] == [(f"{samples[0]['__key__']}.{m}", o, s)
                                                      for m, o, s in info["members"][0][:3]]
    monkeypatch.setattr(member_index, "scan_members", lambda path: pytest.fail("scanned despite the manifest index"))
    shard = resolve_shards(copy)[0]
    assert member_index.shard_index(shard).samples[0][0] == samples[0]["__key__"]
    layout.shard_manifest(copy, 0).write_text(json.dumps({**manifest, "members": info["members"], "bytes": 1}))
    member_index._CACHE.clear()
    with pytest.raises(pytest.fail.Exception, match="scanned"):  # bytes disagree with the file: not trusted
        member_index.shard_index(shard)


def test_episode_selection_plans_only_those_samples(store):
    keys = store_keys(store)
    episode = keys[0].rsplit("_w", 1)[0]
    loader = StreamingLoader(store, 2, FIELDS, episodes=[episode], shuffle=False)
    assert flat(keys_of(loader)) == [k for k in keys if k.startswith(episode + "_")]
    assert loader.dataset.total == sum(k.startswith(episode + "_") for k in keys)


def test_ragged_recipe_fields_are_padded_on_every_axis():
    a = {"__key__": "a", "t": np.ones((2, 3), np.int32), "t.len": np.array([3, 1], np.int32)}
    b = {"__key__": "b", "t": np.ones((2, 5), np.int32), "t.len": np.array([5, 2], np.int32)}
    batch = collate_samples([a, b])
    assert batch["t"].shape == (2, 2, 5) and int(batch["t"][0].sum()) == 6 and "t.mask" not in batch
