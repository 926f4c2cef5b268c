"""Action chunks: horizon in steps or seconds, stride, end padding and mask."""

from __future__ import annotations

import numpy as np
import pytest

from motiondata.tokenize.chunking import ChunkingError, ChunkSpec, chunk_starts, chunks_at, horizon_steps


def ramp(length: int = 6, dim: int = 2) -> np.ndarray:
    return np.arange(length * dim, dtype=np.float32).reshape(length, dim) + 1


def test_horizon_in_steps_and_seconds():
    assert horizon_steps(10) == 10
    assert horizon_steps(None, horizon_seconds=1.0, fps=50) == 50
    assert horizon_steps(10, horizon_seconds=0.5, fps=15) == 8  # seconds win; rounded
    assert horizon_steps(None, horizon_seconds=0.01, fps=10) == 1
    with pytest.raises(ChunkingError, match="needs a positive fps"):
        horizon_steps(None, horizon_seconds=1.0)
    with pytest.raises(ChunkingError, match="horizon must be >= 1"):
        horizon_steps(0)


def test_repeat_padding_and_mask():
    actions = ramp()
    chunks, mask = chunks_at(actions, [0, 4, 5], horizon=3, pad="repeat")
    assert chunks.shape == (3, 3, 2) and mask.dtype == np.uint8
    np.testing.assert_array_equal(chunks[0], actions[0:3])
    np.testing.assert_array_equal(chunks[1], actions[[4, 5, 5]])
    np.testing.assert_array_equal(chunks[2], actions[[5, 5, 5]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [1, 1, 0], [1, 0, 0]])


def test_zero_padding():
    actions = ramp()
    chunks, mask = chunks_at(actions, [4], horizon=4, pad="zeros")
    np.testing.assert_array_equal(chunks[0], np.concatenate([actions[4:6], np.zeros((2, 2), np.float32)]))
    np.testing.assert_array_equal(mask[0], [1, 1, 0, 0])
    assert chunks.dtype == np.float32


def test_starts_stride_and_complete_only():
    np.testing.assert_array_equal(chunk_starts(6, stride=1), np.arange(6))
    np.testing.assert_array_equal(chunk_starts(6, stride=4), [0, 4])
    np.testing.assert_array_equal(chunk_starts(6, complete_only=True, horizon=3), [0, 1, 2, 3])
    assert chunk_starts(2, complete_only=True, horizon=3).size == 0


def test_chunk_spec_whole_episode():
    chunks, masks, starts = ChunkSpec(horizon=None, horizon_seconds=0.3, stride=2)(ramp(7), fps=10)
    assert chunks.shape == (4, 3, 2) and masks.shape == (4, 3)
    np.testing.assert_array_equal(starts, [0, 2, 4, 6])
    assert masks[-1].tolist() == [1, 0, 0]
    empty, empty_masks, _ = ChunkSpec(horizon=5, complete_only=True)(ramp(3))
    assert empty.shape == (0, 5, 2) and empty_masks.shape == (0, 5)


def test_invalid_inputs():
    with pytest.raises(ChunkingError, match="pad must be one of"):
        chunks_at(ramp(), [0], 3, pad="edge")  # type: ignore[arg-type]
    with pytest.raises(ChunkingError, match="chunk starts must lie in"):
        chunks_at(ramp(), [6], 3)
    with pytest.raises(ChunkingError, match="non-empty"):
        chunks_at(np.zeros((0, 2)), [], 3)
