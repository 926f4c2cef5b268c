"""One test per seed system: pipelines/<paper>.yaml builds on the bundled data and holds the paper's tuple."""

from __future__ import annotations

import numpy as np
import pytest

from motiondata.pipeline.runner import run_job
from motiondata.pipeline.spec import load_spec
from motiondata.store.shards import iter_shard
from motiondata.store.validate import validate_store
from tests.factories_recipes import seed_spec, small_aloha

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def aloha(tmp_path_factory):
    return small_aloha(tmp_path_factory.mktemp("seed") / "aloha.hdf5", episodes=2, frames=40)


def build(name: str, aloha, tmp_path, **override) -> list[dict]:
    out = tmp_path / "out"
    result = run_job(load_spec(seed_spec(name, tmp_path, aloha, **override)), out, executor="local",
                     show_progress=False)
    assert result.num_errors == 0, (out / "errors.jsonl").read_text()
    assert validate_store(out) == []
    samples = [s for tar in sorted((out / "shards").glob("*.tar")) for s in iter_shard(tar)]
    assert samples, "the spec produced no samples"
    return samples


def offsets(sample: dict, field: str) -> list[int]:
    """Frames of a field relative to the sample's anchor (None where padded)."""
    anchor = sample["meta"]["anchor"]
    return [f - anchor if f >= 0 else None for f in sample["meta"]["frames"][field]]


def test_lamp(aloha, tmp_path):
    samples = build("lamp", aloha, tmp_path)
    s = samples[0]
    assert s["flow.tracks"].shape == (1, 400, 32, 3) and s["flow.tracks"].dtype == np.float16
    assert s["flow.valid"].shape == (1, 400, 32)
    assert np.abs(s["flow.tracks"].astype(np.float32)).max() <= 1.0  # LaMP's bounds map to [-1, 1]
    assert s["image.agentview"].shape == (32, 32, 3) and s["image.wrist"].shape == (32, 32, 3)
    assert offsets(s, "actions") == list(range(10)) and offsets(s, "state") == [0]
    assert offsets(s, "flow.tracks") == [0]
    assert all(not x["flow.tracks.pad"].any() for x in samples)


def test_clad(aloha, tmp_path):
    samples = build("clad", aloha, tmp_path, stride=3)
    s = next(x for x in samples if x["meta"]["anchor"] >= 6)
    assert offsets(s, "vision.t") == [-6, 0, 6] and s["vision.t"].ndim == 2 and s["vision.t"].shape[0] == 3
    assert offsets(s, "proprio") == [-6, 0, 6]
    assert offsets(s, "actions.past") == list(range(-6, 0)) and offsets(s, "actions.target") == list(range(6))
    assert s["actions.past"].shape == (6, 14) and s["actions.target"].shape == (6, 14)
    first = samples[0]
    assert first["meta"]["anchor"] == 0 and first["actions.past.pad"].all()  # padded, never another episode
    assert all(not x["actions.target.pad"].any() for x in samples)  # drop_padded: full targets only


def test_cowvla_pretrain(aloha, tmp_path):
    samples = build("cowvla_pretrain", aloha, tmp_path)
    s = samples[0]
    assert s["first.tokens"].ndim == 3 and s["first.tokens"].shape[0] == 1  # (1, patches, E)
    assert s["zm"].shape[:3] == (1, 16, 4)  # 17 frames -> 5 latents -> 4 differences
    assert s["last.codes"].ndim == 3 and offsets(s, "last.codes") == [16]
    assert offsets(s, "zm") == [0] and offsets(s, "first.tokens") == [0]


def test_cowvla_cofinetune(aloha, tmp_path):
    samples = build("cowvla_cofinetune", aloha, tmp_path)
    s = samples[0]
    assert offsets(s, "keyframes.codes") == [0, 10] and s["keyframes.codes"].dtype == np.int32
    assert offsets(s, "fast.tokens") == [0, 10] and s["fast.tokens.len"].min() > 0
    assert s["fast.chunk_mask"].shape == (2, 10)
    assert s["zm"].shape[:3] == (2, 16, 2)  # 9-frame segments -> 3 latents -> 2 differences
    assert s["image.first"].shape == (32, 32, 3)
    from motiondata.tokenize.stage import load_tokenizer_cached
    from tests.factories_recipes import REPO

    tokenizer = load_tokenizer_cached(str(REPO / "tokenizers/fast/demo"))
    ids = s["fast.tokens"][0][: s["fast.tokens.len"][0]]
    assert tokenizer.decode([ids.tolist()]).shape[-2:] == (10, 14)  # A1 decodes to a 10 x 14 chunk


def test_lamo(aloha, tmp_path):
    samples = build("lamo", aloha, tmp_path)
    s = next(x for x in samples if x["meta"]["anchor"] >= 12)
    assert s["z.history"].shape[0] == 4 and not s["z.history.pad"].any()
    zf, mf = s["meta"]["frames"]["z.history"], s["meta"]["frames"]["m.history"]
    assert zf == sorted(zf) and len(set(zf)) == 4  # four consecutive latent states
    assert mf == zf[1:]  # m_{t-3..t-1}: each token sits at the frame of the later latent
    assert s["m.next"].dtype == np.int32 and s["m.next"].ndim == 3  # (1, levels, tokens)
    assert s["meta"]["frames"]["m.next"][0] > zf[-1]
    assert s["x.t"].shape == (32, 32, 3)


def test_lingbot_va(aloha, tmp_path):
    samples = build("lingbot_va", aloha, tmp_path)
    s = next(x for x in samples if x["meta"]["anchor"] >= 8)
    assert s["latents.history"].shape[0] == 8 and s["latents.history"].shape[-1] == 8  # views side by side: 2w
    assert s["actions.next"].shape == (2, 4, 30)  # K = 2 latent frames x 4 actions x 30 dims
    assert s["action_dims"].shape[-1] == 30 and s["action_dims"].any()
    assert s["text.tokens"].ndim == 3 and s["text.mask"].shape[:2] == s["text.tokens"].shape[:2]
    a = s["meta"]["anchor"]
    assert s["meta"]["frames"]["actions.next"] == [a + 4, a + 8]  # the next two latent frames' actions
