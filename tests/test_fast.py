"""FAST tokenizer: round trip within the quantisation bound, strict/relaxed decode, save/load, normalisation,
the pipeline stage and the fit report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from motiondata.errors import MotionDataError
from motiondata.tokenize.fast import FastDecodeError, FastTokenizer, FastTokenizerError
from motiondata.tokenize.fit_report import fit_fast, fit_fast_cli, format_report, quantization_bound
from motiondata.tokenize.normalize import (NormStats, NormStatsError, QuantileNormalize, compute_norm_stats,
                                           load_norm_stats, save_norm_stats)
from motiondata.tokenize.stage import FastStage, FastStageError
from tests.factories_fast import (make_episode, make_item, smooth_actions, smooth_chunks, write_libero_hdf5,
                                  write_store)

T, D = 10, 7


@pytest.fixture(scope="module")
def train():
    return smooth_chunks(400, T, D, seed=2)


@pytest.fixture(scope="module")
def tok(train):
    return FastTokenizer.fit(train, scale=10, vocab_size=256)


# ------------------------------------------------------------------ round trip
@pytest.mark.parametrize("scale", [5, 10, 40])
def test_round_trip_within_quantisation_bound(train, scale):
    """Rounding error per coefficient <= 0.5/scale; the orthonormal IDCT gives per value
    |err_t| <= 0.5/scale * sum_k |C[k, t]| <= 0.5/scale * sqrt(T), and per dim ||err||_2 <= 0.5/scale * sqrt(T)."""
    tok = FastTokenizer.fit(train, scale=scale, vocab_size=2048)
    err = tok.decode(tok.encode(train), T, D) - train
    tight, loose = quantization_bound(scale, T), 0.5 / scale * np.sqrt(T)
    assert tight <= loose
    assert np.abs(err).max() <= tight + 1e-5
    assert np.sqrt((err ** 2).sum(axis=1)).max() <= loose + 1e-5


def test_quantisation_bound_values():
    assert quantization_bound(10, 1) == pytest.approx(0.05)
    assert quantization_bound(10, 10) < 0.05 * np.sqrt(10)


def test_encode_shapes(tok, train):
    ids = tok.encode(train[:5])
    assert len(ids) == 5 and all(isinstance(i, int) for i in ids[0])
    assert tok.encode(train[0]) == ids[:1]  # a 2-D chunk is a batch of one
    assert tok.encode(list(train[:5])) == ids
    assert tok.encode(np.zeros((0, T, D), np.float32)) == []
    assert tok.decode([], T, D).shape == (0, T, D)
    mixed = tok.encode([train[0], train[1][:5]])
    assert tok.decode(mixed[1:], 5, D).shape == (1, 5, D)


def test_non_finite_chunks_are_named(tok, train):
    bad = train[:3].copy()
    bad[2, 4, 1] = np.nan
    with pytest.raises(FastTokenizerError, match="chunk 2 holds NaN or inf"):
        tok.encode(bad)


def test_fit_reports_too_small_vocab(train):
    with pytest.raises(FastTokenizerError, match="vocab_size 8 is smaller than the coefficient range"):
        FastTokenizer.fit(train, vocab_size=8)


# ------------------------------------------------------------------ decode errors
def test_strict_decode_names_sequence_and_count(tok, train):
    ids = tok.encode(train[:3])
    ids[1] = ids[1][:-1]
    with pytest.raises(FastDecodeError, match=r"token sequence 1: got \d+ coefficients, expected T\*D = 70") as err:
        tok.decode(ids, T, D)
    assert isinstance(err.value, MotionDataError) and isinstance(err.value, ValueError)
    assert err.value.index == 1


def test_strict_decode_rejects_ids_outside_vocab(tok, train):
    ids = tok.encode(train[:2])
    ids[0] = ids[0] + [tok.bpe_vocab_size + 5]
    with pytest.raises(FastDecodeError, match=r"token sequence 0: ids \[\d+\] are outside the vocabulary"):
        tok.decode(ids, T, D)


def test_strict_decode_wrong_shape(tok, train):
    with pytest.raises(FastDecodeError, match="expected T\\*D = 80"):
        tok.decode(tok.encode(train[:1]), 8, 10)
    with pytest.raises(FastTokenizerError, match="needs the chunk shape"):
        FastTokenizer(tok.bpe, min_token=tok.min_token).decode([[1]])


def test_relaxed_decode_truncates_and_pads(tok, train):
    ids = tok.encode(train[:2])
    full = tok.decode(ids, T, D)
    padded = tok.decode([ids[0][:2]], T, D, strict=False)
    assert padded.shape == (1, T, D) and np.isfinite(padded).all()
    longer = tok.decode([ids[0] + ids[1]], T, D, strict=False)
    np.testing.assert_allclose(longer[0], full[0])


def test_relaxed_decode_never_crashes_on_random_ids(tok):
    rng = np.random.default_rng(0)
    n = tok.bpe_vocab_size
    lists = []
    for i in range(1000):
        ids = rng.integers(-5, n + 50, size=rng.integers(0, 60)).tolist()
        if i % 50 == 0:
            ids += [2 ** 40, -(2 ** 70)]
        lists.append(ids)
    out = tok.decode(lists, T, D, strict=False)
    assert out.shape == (1000, T, D) and np.isfinite(out).all()
    assert np.abs(out).max() <= (tok.max_token - tok.min_token + abs(tok.min_token)) / tok.scale * T


# ------------------------------------------------------------------ save / load
def test_save_load_round_trip(tmp_path, tok, train):
    tok.save(tmp_path / "fast")
    names = {p.name for p in (tmp_path / "fast").iterdir()}
    assert {"processor_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= names
    loaded = FastTokenizer.load(tmp_path / "fast")
    assert loaded.encode(train[:50]) == tok.encode(train[:50])
    assert (loaded.time_horizon, loaded.action_dim, loaded.max_token) == (T, D, tok.max_token)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FastTokenizerError, match="processor_config.json: not found"):
        FastTokenizer.load(tmp_path)
    (tmp_path / "processor_config.json").write_text(json.dumps({"scale": 10, "min_token": -3}))
    with pytest.raises(FastTokenizerError, match="no tokenizer.json"):
        FastTokenizer.load(tmp_path)


# ------------------------------------------------------------------ normalisation
def test_quantile_normalisation_formula_and_inverse():
    x = smooth_actions(50, 4, seed=1)
    stats = compute_norm_stats([x])
    norm = QuantileNormalize.from_stats(stats)
    q01, q99 = np.array(stats.q01), np.array(stats.q99)
    np.testing.assert_allclose(norm.apply(x), (x - q01) / (q99 - q01 + 1e-6) * 2 - 1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(norm.inverse().apply(norm.apply(x)), x, atol=1e-5)
    sample = norm({"actions": x, "other": 1})
    assert sample["other"] == 1 and sample["actions"].dtype == np.float32
    with pytest.raises(NormStatsError, match="data has 3 dims but the stats have 4"):
        norm.apply(x[:, :3])


def test_norm_stats_file_is_openpi_format(tmp_path):
    stats = NormStats((0.0, 1.0), (1.0, 1.0), (-1.0, 0.0), (1.0, 2.0))
    save_norm_stats(tmp_path / "s.json", {"actions": stats})
    payload = json.loads((tmp_path / "s.json").read_text())
    assert set(payload["norm_stats"]["actions"]) == {"mean", "std", "q01", "q99"}
    assert load_norm_stats(tmp_path / "s.json")["actions"] == stats


# ------------------------------------------------------------------ fit report + stage
@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    out = tmp_path_factory.mktemp("fast") / "tok"
    episodes = [make_episode(40, 14, seed=s) for s in range(6)]
    return out, fit_fast(episodes, out, scale=10, vocab_size=256, horizon=8)


def test_fit_report_numbers(fitted):
    out, report = fitted
    assert (out / "norm_stats.json").is_file() and (out / "fit_report.json").is_file()
    assert report["chunks"] == 6 * 40 and report["horizon"] == 8 and report["action_dim"] == 14
    assert report["compression_ratio"] == pytest.approx(8 * 14 / report["tokens_per_chunk"]["mean"])
    assert report["roundtrip_error"]["normalized"]["max"] <= report["quantization_bound_normalized"] + 1e-5
    text = format_report(report)
    assert "compression" in text and "tokens/chunk" in text


def test_stage_adds_tokens_and_mask(fitted):
    out, _ = fitted
    stage = FastStage(tokenizer=str(out), horizon=8)
    episode = make_episode(30, 14, seed=11)
    item = stage(make_item(episode, window=8, stride=4))
    tok = FastTokenizer.load(out)
    norm = QuantileNormalize.from_stats(load_norm_stats(out / "norm_stats.json")["actions"])
    for window, sample in zip(item["windows"], item["samples"]):
        tokens, mask = sample["fast.tokens"], sample["fast.chunk_mask"]
        assert tokens.dtype == np.int32 and mask.dtype == np.uint8 and mask.shape == (8,)
        real = min(8, 30 - window.start)
        assert mask.sum() == real
        chunk = episode.actions[window.start:window.start + real]
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], 8 - real, axis=0)])
        assert tokens.tolist() == tok.encode(norm.apply(chunk))[0]
    assert len(stage.config_hash()) == 16 and stage.name == "fast"


def test_stage_stats_options(fitted, tmp_path):
    out, _ = fitted
    episode = make_episode(20, 14, seed=3)
    raw = FastStage(tokenizer=str(out), horizon=8, stats=None)(make_item(episode))
    assert raw["samples"][0]["fast.tokens"].size > 0
    with pytest.raises(FastStageError, match="norm stats .* not found"):
        FastStage(tokenizer=str(out), stats=str(tmp_path / "missing.json"))(make_item(episode))
    with pytest.raises(FastStageError, match="no 'actions' field"):
        FastStage(tokenizer=str(out))(make_item(make_episode(20, 14, with_actions=False)))


def test_stage_universal_layout(tmp_path):
    episodes = [make_episode(30, 14, seed=s) for s in range(4)]
    report = fit_fast(episodes, tmp_path / "u", vocab_size=256, horizon=5, universal="aloha")
    assert report["action_dim"] == 30
    stage = FastStage(tokenizer=str(tmp_path / "u"), horizon=5, universal="aloha")
    item = stage(make_item(episodes[0], window=5, stride=5))
    assert all(s["fast.chunk_mask"].shape == (5,) for s in item["samples"])


def test_fit_from_store_and_hdf5(tmp_path):
    store = write_store(tmp_path / "store", [make_episode(25, 7, seed=s) for s in range(3)])
    report = fit_fast_cli(str(store), str(tmp_path / "a"), scale=10, vocab_size=256, horizon=5)
    assert report["episodes"] == 3 and report["chunks"] == 75
    h5 = write_libero_hdf5(tmp_path / "demo.hdf5", [smooth_actions(20, 7, seed=s) for s in range(2)])
    report = fit_fast_cli(str(h5), str(tmp_path / "b"), scale=10, vocab_size=256, horizon=5)
    assert report["chunks"] == 40 and FastTokenizer.load(tmp_path / "b").action_dim == 7


def test_bundled_demo_tokenizer_round_trips():
    """tokenizers/fast/demo (fitted on data/sample/aloha_sim.hdf5) loads and reconstructs its own data."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    demo, sample = root / "tokenizers" / "fast" / "demo", root / "data" / "sample" / "aloha_sim.hdf5"
    if not (demo / "processor_config.json").is_file() or not sample.is_file():
        pytest.skip("demo tokenizer or sample data not present")
    from motiondata.tokenize.fit_report import chunk_episodes, read_hdf5

    tok = FastTokenizer.load(demo)
    norm = QuantileNormalize.from_stats(load_norm_stats(demo / "norm_stats.json")["actions"])
    chunks = norm.apply(chunk_episodes([e["actions"] for e in read_hdf5(sample).episodes], 10))
    decoded = tok.decode(tok.encode(chunks), 10, 14)
    assert np.abs(decoded - chunks).max() <= quantization_bound(tok.scale, 10) + 1e-5


def test_stage_horizon_in_seconds(fitted):
    out, _ = fitted
    item = FastStage(tokenizer=str(out), horizon_seconds=0.8)(make_item(make_episode(20, 14, fps=10.0)))
    assert all(s["fast.chunk_mask"].shape == (8,) for s in item["samples"])


def test_fit_uses_store_stats(tmp_path):
    store = write_store(tmp_path / "store", [make_episode(25, 7, seed=s) for s in range(2)])
    stats = NormStats((0.0,) * 7, (1.0,) * 7, (-4.0,) * 7, (4.0,) * 7)
    save_norm_stats(store / "stats.json", {"actions": stats})
    fit_fast(store, tmp_path / "tok", vocab_size=256, horizon=5)
    assert load_norm_stats(tmp_path / "tok" / "norm_stats.json")["actions"] == stats
