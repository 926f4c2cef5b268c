"""Real Lightning-1.x-style checkpoints load without executing anything from the file.

The checkpoints are pickled by ``torch.save`` with classes from a fake ``pytorch_lightning`` module built in
the test (callback state keyed by a class, ``AttributeDict`` hparams, ``argparse.Namespace``, Adam state), and
removed from ``sys.modules`` before loading, so a loader that imported them would fail. The malicious ones
carry a ``__reduce__`` that writes a marker file if executed.
"""

from __future__ import annotations

import argparse
import builtins
import os
import sys
import types
import zipfile

import numpy as np
import pytest
import torch

from motiondata.encode.safe_ckpt import CheckpointError, load_checkpoint, load_checkpoint_state
from motiondata.encode.vqgan import VQGANCodec, load_vqgan, read_state_dict
from tests.factories_vqgan import moving_square_frames, write_taming_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fake_lightning() -> types.ModuleType:
    pl = types.ModuleType("pytorch_lightning")
    cb = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")
    par = types.ModuleType("pytorch_lightning.utilities.parsing")

    class ModelCheckpoint:
        pass

    class AttributeDict(dict):
        def __getattr__(self, key):
            return self[key]

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = cb.__name__, "ModelCheckpoint"
    AttributeDict.__module__, AttributeDict.__qualname__ = par.__name__, "AttributeDict"
    cb.ModelCheckpoint, par.AttributeDict = ModelCheckpoint, AttributeDict
    return pl, cb, par


class Marker:
    """Writes ``path`` when unpickled by a loader that executes reduce."""

    def __init__(self, path: str, how: str = "exec"):
        self.path, self.how = path, how

    def __reduce__(self):
        if self.how == "system":
            return os.system, (f"touch {self.path}",)
        return builtins.exec, (f"open({self.path!r}, 'w').write('ran')",)


def lightning_ckpt(tmp_path, state: dict, extra: dict | None = None):
    """Save a Lightning-1.x-shaped checkpoint around ``state`` with the fake module registered, then remove it."""
    pl, cb, par = _fake_lightning()
    names = [pl.__name__, cb.__name__, par.__name__]
    sys.modules.update({m.__name__: m for m in (pl, cb, par)})
    try:
        weight = torch.nn.Parameter(torch.randn(4, 3))
        opt = torch.optim.Adam([weight], lr=1e-3)
        weight.grad = torch.ones_like(weight)
        opt.step()
        hparams = par.AttributeDict(ddconfig={"ch": 32}, args=argparse.Namespace(lr=4.5e-6, gpus="0,"))
        ckpt = {"epoch": 12, "global_step": 48000, "pytorch-lightning_version": "1.0.8", "state_dict": state,
                "callbacks": {cb.ModelCheckpoint: {"best_model_score": torch.tensor(0.25), "monitor": "val/rec_loss"}},
                "optimizer_states": [opt.state_dict()], "lr_schedulers": [], "hparams_name": "kwargs",
                "hyper_parameters": hparams, **(extra or {})}
        path = tmp_path / "last.ckpt"
        torch.save(ckpt, path)
    finally:
        for name in names:
            sys.modules.pop(name, None)
    return path


def test_lightning_checkpoint_is_refused_by_weights_only_but_loads_safely(tmp_path):
    state = {"a.weight": torch.randn(3, 2), "b.bias": torch.arange(5, dtype=torch.int64)}
    path = lightning_ckpt(tmp_path, state)
    with pytest.raises(Exception):
        torch.load(path, map_location="cpu", weights_only=True)
    loaded = load_checkpoint_state(path)
    assert set(loaded) == set(state)
    for key in state:
        assert torch.equal(loaded[key], state[key]) and loaded[key].dtype == state[key].dtype
    assert "pytorch_lightning" not in sys.modules
    obj, inert = load_checkpoint(path)
    assert "pytorch_lightning.utilities.parsing.AttributeDict" in inert and "argparse.Namespace" in inert
    assert torch.is_tensor(obj["optimizer_states"][0]["state"][0]["exp_avg"])


def test_views_and_shared_storages_rebuild_exactly(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {"full": base, "t": base.t(), "row": base[2], "half": base.to(torch.float16), "flag": base > 5}
    loaded = load_checkpoint_state(lightning_ckpt(tmp_path, state))
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_taming_lightning_ckpt_encodes_identically_to_plain_state_dict(tmp_path):
    yaml_path, plain_ckpt, _ = write_taming_checkpoint(tmp_path / "plain")
    state = torch.load(plain_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    lightning = lightning_ckpt(tmp_path, state)
    frames = moving_square_frames(4, 32)
    plain_codes = VQGANCodec(load_vqgan(yaml_path, plain_ckpt)).encode(frames)
    lightning_codes = VQGANCodec(load_vqgan(yaml_path, lightning)).encode(frames)
    np.testing.assert_array_equal(plain_codes, lightning_codes)
    assert not any(k.startswith("loss.") for k in read_state_dict(lightning))


@pytest.mark.parametrize("how", ["exec", "system"])
def test_malicious_reduce_in_hparams_runs_nothing(tmp_path, how):
    marker = tmp_path / "pwned"
    path = lightning_ckpt(tmp_path, {"w": torch.ones(2)}, extra={"hyper_parameters": Marker(str(marker), how)})
    state = load_checkpoint_state(path)
    assert torch.equal(state["w"], torch.ones(2))
    assert not marker.exists()


def test_malicious_reduce_inside_state_dict_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = lightning_ckpt(tmp_path, {"w": torch.ones(2), "evil": Marker(str(marker))})
    with pytest.raises(CheckpointError, match="not tensors"):
        load_checkpoint_state(path)
    with pytest.raises(ValueError, match="not tensors"):
        read_state_dict(path)
    assert not marker.exists()


def test_not_a_checkpoint_and_truncated_archives(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x80\x02not a zip")
    with pytest.raises(CheckpointError, match="not a torch zip checkpoint"):
        load_checkpoint_state(junk)
    good = lightning_ckpt(tmp_path, {"w": torch.ones(300)})
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(tmp_path / "cut.ckpt", "w") as dst:
        for item in src.infolist():
            if "/data/" not in item.filename:  # drop every storage record
                dst.writestr(item, src.read(item))
    with pytest.raises(CheckpointError, match="missing from the archive"):
        load_checkpoint_state(tmp_path / "cut.ckpt")
