"""WindowDataset: random access by (episode, window) and (episode, start, length) over episodes.zarr."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from motiondata.errors import StoreError
from motiondata.loader.collate import collate_samples
from motiondata.loader.random_access import WindowDataset
from tests.factories_loader import WINDOW, make_samples, make_store


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("store"), episodes=3, windows=4)


@pytest.fixture(scope="module")
def originals() -> dict[str, dict]:
    samples, _ = make_samples(episodes=3, windows=4)
    return {s["__key__"]: s for s in samples}


def test_windows_match_the_samples_written(store, originals):
    ds = WindowDataset(store)
    assert len(ds) == 12
    item = ds[5]
    src = originals[item["__key__"]]
    assert item["__key__"] == "ep001_w0001"
    for name in ("vae.latents", "motion.zm", "fast.tokens", "keyframes.codes", "flow.valid", "text.embedding"):
        np.testing.assert_array_equal(item[name], src[name])
        assert item[name].dtype == src[name].dtype
    np.testing.assert_array_equal(item["actions"], src["actions"])  # per-frame array cut to the window
    assert item["rgb.front"].shape == (WINDOW, 8, 8, 3)
    assert item["meta"]["start"] == src["meta"]["start"] and item["meta"]["episode"] == "ep001"


def test_fields_restrict_what_is_read(store):
    item = WindowDataset(store, fields=["fast.tokens", "actions"])[0]
    assert set(item) == {"__key__", "fast.tokens", "actions"}
    with pytest.raises(StoreError, match="no field"):
        WindowDataset(store, fields=["flow.nope"])[0]


def test_frame_spans_by_start_and_length(store):
    ds = WindowDataset(store, fields=["actions", "rgb.front"], window=6, stride=4)
    assert len(ds) == 3 * 4  # 20 frames: starts 0, 4, 8, 12
    item = ds.get("ep002", start=3, length=6)
    full = WindowDataset(store, fields=["actions"]).get("ep002", start=0, length=20)["actions"]
    np.testing.assert_array_equal(item["actions"], full[3:9])
    assert item["rgb.front"].shape == (6, 8, 8, 3)
    with pytest.raises(IndexError, match="outside episode"):
        ds.get("ep002", start=18, length=6)
    with pytest.raises(IndexError, match="windows"):
        WindowDataset(store).get("ep000", window=9)


def test_works_in_dataloader_workers(store):
    ds = WindowDataset(store, fields=["vae.latents", "fast.tokens", "meta"])
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_samples)
    batches = list(loader)
    assert len(batches) == 3
    assert batches[0]["vae.latents"].dtype == torch.float16 and batches[0]["vae.latents"].shape[0] == 4
    assert batches[0]["fast.tokens.mask"].shape[0] == 4
    assert sorted(k for b in batches for k in b["__key__"]) == sorted(f"ep{e:03d}_w{w:04d}" for e in range(3) for w in range(4))


def test_missing_store_says_how_to_fix(tmp_path):
    with pytest.raises(StoreError, match="motiondata build"):
        WindowDataset(tmp_path)
