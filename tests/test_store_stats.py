import json

import numpy as np
import pytest

from motiondata.errors import StoreError
from motiondata.store.stats import (DEFAULT_ALPHA, ZERO_THRESHOLD, RunningStats, load_norm_stats, merge_partials,
                                    read_partial_stats, write_partial_stats, write_stats)


def hard_data(rows: int = 20_000, seed: int = 0) -> np.ndarray:
    """Columns: normal, all-negative, constant, Cauchy (heavy tails), log-normal, half zeros, tiny values,
    mixed-sign integers."""
    rng = np.random.default_rng(seed)
    cols = [
        rng.normal(size=rows),
        -np.abs(rng.normal(5, 2, size=rows)) - 0.1,
        np.full(rows, 2.5),
        rng.standard_cauchy(rows),
        rng.lognormal(0, 3, size=rows),
        np.where(rng.random(rows) < 0.5, 0.0, rng.normal(size=rows)),
        rng.normal(size=rows) * 1e-6,
        rng.integers(-3, 4, size=rows).astype(float),
    ]
    return np.stack(cols, axis=1)


def random_splits(x: np.ndarray, parts: int, rng) -> list[np.ndarray]:
    cuts = np.sort(rng.choice(np.arange(1, len(x)), parts - 1, replace=False))
    return np.split(x[rng.permutation(len(x))], cuts)


def partial_of(chunk: np.ndarray, name: str = "actions") -> dict:
    stats = RunningStats()
    for piece in np.array_split(chunk, 3):  # several updates per partial
        stats.update(name, piece)
    return json.loads(json.dumps(stats.to_dict()))  # through JSON, as stored


def assert_quantiles_within_guarantee(est, x, q):
    """|est - np.quantile| <= alpha * max(|x_lo|, |x_hi|) + zero_threshold (see stats.py)."""
    xs = np.sort(x, axis=0)
    pos = q * (len(x) - 1)
    lo, hi = xs[int(np.floor(pos))], xs[int(np.ceil(pos))]
    bound = DEFAULT_ALPHA * np.maximum(np.abs(lo), np.abs(hi)) * (1 + 1e-9) + ZERO_THRESHOLD
    err = np.abs(est - np.quantile(x, q, axis=0))
    assert (err <= bound).all(), (err, bound)


@pytest.mark.parametrize("parts, seed", [(2, 0), (7, 1), (40, 2)])
def test_merged_partials_equal_one_pass(parts, seed):
    x = hard_data(seed=seed)
    rng = np.random.default_rng(seed)
    merged = merge_partials(partial_of(c) for c in random_splits(x, parts, rng)).norm_stats()["norm_stats"]["actions"]
    whole = RunningStats()
    whole.update("actions", x)
    one = whole.norm_stats()["norm_stats"]["actions"]
    np.testing.assert_allclose(merged["mean"], x.mean(axis=0), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(merged["std"], x.std(axis=0), rtol=1e-9, atol=1e-15)
    assert merged["q01"] == one["q01"] and merged["q99"] == one["q99"]  # sketch merging is exact
    assert_quantiles_within_guarantee(np.array(merged["q01"]), x, 0.01)
    assert_quantiles_within_guarantee(np.array(merged["q99"]), x, 0.99)


def test_quantiles_on_100k_rows_and_many_levels():
    x = hard_data(rows=100_000, seed=5)
    stats = RunningStats()
    stats.update("a", x)
    qs = [0.0, 0.001, 0.01, 0.25, 0.5, 0.75, 0.99, 1.0]
    est = stats.quantiles("a", qs)
    for q, row in zip(qs, est):
        assert_quantiles_within_guarantee(row, x, q)
    np.testing.assert_array_equal(est[0], x.min(axis=0))
    np.testing.assert_array_equal(est[-1], x.max(axis=0))


def test_constant_dimension_is_exact():
    stats = RunningStats()
    stats.update("s", np.full((1000, 2), [-3.25, 0.0]))
    ns = stats.norm_stats()["norm_stats"]["s"]
    assert ns["q01"] == ns["q99"] == ns["mean"] == [-3.25, 0.0]
    assert ns["std"] == [0.0, 0.0]


def test_partial_roundtrip_is_exact(tmp_path):
    x = hard_data(rows=3000)
    stats = RunningStats()
    stats.update("actions", x)
    stats.update("state", x[:, :3])
    write_partial_stats(tmp_path, 4, stats)
    back = read_partial_stats(tmp_path, 4)
    assert back.to_dict() == stats.to_dict()
    assert back.norm_stats() == stats.norm_stats()
    assert read_partial_stats(tmp_path, 5) is None


def test_merge_is_order_independent():
    rng = np.random.default_rng(3)
    chunks = random_splits(hard_data(rows=5000), 6, rng)
    parts = [partial_of(c) for c in chunks]
    a = merge_partials(parts).to_dict()
    b = merge_partials(parts[::-1]).to_dict()
    assert a["fields"]["actions"]["pos"] == b["fields"]["actions"]["pos"]
    assert a["fields"]["actions"]["count"] == 5000
    np.testing.assert_allclose(a["fields"]["actions"]["M2"], b["fields"]["actions"]["M2"], rtol=1e-12)


def test_openpi_format_write_and_load(tmp_path):
    stats = RunningStats()
    stats.update("actions", hard_data(rows=500)[:, :4])
    stats.update("state", np.ones((10, 2)))
    path = write_stats(tmp_path, stats)
    doc = json.loads(path.read_text())
    assert set(doc) == {"norm_stats"}
    assert set(doc["norm_stats"]) == {"actions", "state"}
    for entry in doc["norm_stats"].values():
        assert set(entry) == {"mean", "std", "q01", "q99"}
    loaded = load_norm_stats(tmp_path)  # a store folder or the file itself
    assert loaded.keys() == load_norm_stats(path).keys()
    assert loaded["actions"]["q99"].shape == (4,)
    np.testing.assert_array_equal(loaded["state"]["mean"], [1.0, 1.0])


def test_bad_inputs_are_refused(tmp_path):
    stats = RunningStats()
    with pytest.raises(ValueError, match="expected \\(N, D\\)"):
        stats.update("a", np.zeros(5))
    with pytest.raises(ValueError, match="non-finite"):
        stats.update("a", np.array([[np.nan]]))
    stats.update("a", np.zeros((2, 3)))
    with pytest.raises(ValueError, match="3"):
        stats.update("a", np.zeros((2, 4)))
    with pytest.raises(ValueError, match="alpha"):
        stats.merge(RunningStats(alpha=0.01))
    with pytest.raises(StoreError, match="no data"):
        RunningStats().quantiles("missing", [0.5])
    with pytest.raises(StoreError, match="partial"):
        RunningStats.from_dict({"fields": {}})
    (tmp_path / "bad.json").write_text('{"norm_stats": {"a": {"mean": [1]}}}')
    with pytest.raises(StoreError, match="q01"):
        load_norm_stats(tmp_path / "bad.json")


def test_empty_update_and_empty_merge():
    stats = RunningStats()
    stats.update("a", np.zeros((0, 3)))
    assert stats.norm_stats() == {"norm_stats": {}}
    assert merge_partials([]).norm_stats() == {"norm_stats": {}}
    assert RunningStats.from_dict(stats.to_dict()).fields["a"].count == 0
