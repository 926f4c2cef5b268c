"""Slim trainer on a windowed factory store (``--leak-check off``, fields named by flag): loss falls on CPU,
resume continues the sample order, heads follow the store. The recipe-store objectives (leak check,
masks, held-out metrics vs baselines) are in tests/test_train_objectives.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from motiondata.train.train import TrainConfig, parse_args, train
from motiondata.usage import UsageError
from tests.factories_loader import CODES, FAST_VOCAB, make_store


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("store"), episodes=4, windows=8)  # 32 samples


def tiny(store: Path, out: Path, **overrides) -> TrainConfig:
    base = dict(store=str(store), out=str(out), d_model=32, n_layers=1, n_heads=2, batch_size=8, max_steps=40,
                lr=3e-3, warmup_steps=5, num_workers=0, device="cpu", log_every=5, ckpt_every=0,
                fast_vocab=FAST_VOCAB, keyframe_codes=CODES, shuffle_buffer=16, leak_check="off", held_out=0.0,
                inputs="vae.latents,text.embedding", targets=WINDOW_TARGETS)
    base.update(overrides)
    return TrainConfig(**base)


pytestmark = pytest.mark.usefixtures("one_torch_thread")
WINDOW_TARGETS = "zm=motion.zm,flow=flow.tracks,fast=fast.tokens,keyframes=keyframes.codes"


def step_losses(records):
    return [loss for r in records for loss in r["step_losses"]]


def test_tiny_config_trains_on_cpu_and_loss_falls(store, tmp_path):
    records = train(tiny(store, tmp_path, max_steps=50))
    losses = step_losses(records)
    assert len(losses) == 50
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert set(records[-1]["heads"]) == {"zm", "flow", "fast", "keyframes", "total"}
    assert 0.0 <= records[-1]["data_wait"] <= 1.0 and records[-1]["samples_per_s"] > 0
    assert (tmp_path / "ckpt.pt").exists()


class Preempted(Exception):
    pass


def test_stop_and_resume_mid_epoch_keeps_sample_order_and_losses(store, tmp_path):
    """A run killed after step 7 (checkpoint at 6; 4 batches per epoch, so mid-epoch) and resumed with
    --resume auto sees the same batches, and gets the same losses, as an uninterrupted run."""
    def recorder(keys, losses):
        return lambda step, batch, head_losses: (keys.append(list(batch["__key__"])),
                                                 losses.append(float(sum(v.detach() for v in head_losses.values()))))

    full_keys, full_losses = [], []
    train(tiny(store, tmp_path / "full", max_steps=14, num_workers=2), on_step=recorder(full_keys, full_losses))

    keys, losses = [], []

    def crash_after_7(step, batch, head_losses):
        recorder(keys, losses)(step, batch, head_losses)
        if step == 7:
            raise Preempted

    with pytest.raises(Preempted):
        train(tiny(store, tmp_path / "cut", max_steps=14, num_workers=2, ckpt_every=3), on_step=crash_after_7)
    del keys[6:], losses[6:]  # step 7 was lost with the crash; the checkpoint holds step 6
    train(tiny(store, tmp_path / "cut", max_steps=14, num_workers=2, resume="auto"),
          on_step=recorder(keys, losses))
    assert keys == full_keys
    assert losses == pytest.approx(full_losses, rel=1e-4)


def test_heads_without_fields_are_skipped(tmp_path):
    small = make_store(tmp_path / "store", episodes=2, windows=4, fields=["vae.latents", "motion.zm"])
    records = train(tiny(small, tmp_path / "run", batch_size=4, max_steps=3, log_every=3))
    assert set(records[-1]["heads"]) == {"zm", "total"}


def test_store_without_the_inputs_or_with_large_ids_is_refused(tmp_path, store):
    flow_only = make_store(tmp_path / "store", episodes=2, windows=4, fields=["flow.tracks", "flow.valid"])
    with pytest.raises(UsageError, match="has none of them"):
        train(tiny(flow_only, tmp_path / "run"))
    with pytest.raises(ValueError, match="--fast-vocab"):
        train(tiny(store, tmp_path / "run2", fast_vocab=4))


def test_cli_flags_come_from_the_config_fields():
    cfg = parse_args(["--store", "s", "--batch-size", "4", "--no-bf16", "--compile", "--heads", "zm,fast",
                      "--lr", "0.01", "--steps", "7", "--leak-check", "off"])
    assert (cfg.store, cfg.batch_size, cfg.bf16, cfg.compile, cfg.heads, cfg.lr) == ("s", 4, False, True, "zm,fast", 0.01)
    assert (cfg.max_steps, cfg.leak_check) == (7, "off")
    with pytest.raises(SystemExit):
        parse_args([])


@pytest.mark.gpu
def test_trains_on_cuda_with_bf16(store, tmp_path):
    records = train(tiny(store, tmp_path, device="cuda", num_workers=1, max_steps=10, log_every=5))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
