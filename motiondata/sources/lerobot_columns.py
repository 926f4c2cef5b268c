"""Column helpers of the LeRobot reader: row-group pruning, checked vectors and timestamps, image columns.

Nothing here casts silently: text or non-numeric columns, ``|x| > max_abs`` and timestamps whose rate
disagrees with ``info.json``'s ``fps`` raise a SourceError naming the file, episode and column.
"""

from __future__ import annotations

import os

import numpy as np

from motiondata.errors import SourceError
from motiondata.sources.base import vector_field

FPS_TOLERANCE = 0.01  # info.json fps and the timestamps' rate may differ by this fraction


def checked_timestamps(column, fps: float, file: str, uid: str) -> np.ndarray:
    """The ``timestamp`` column (s) as float64, its median step checked against ``fps`` (FPS_TOLERANCE)."""
    times = np.asarray(column.to_numpy(zero_copy_only=False)).reshape(-1)
    if times.dtype.kind not in "iuf":
        raise SourceError(file, f"column 'timestamp' has dtype {times.dtype}, not numbers; rewrite it as "
                                "float32 seconds", episode=uid)
    times = times.astype(np.float64)
    if len(times) < 2:
        return times
    step = float(np.median(np.diff(times)))
    if not (np.isfinite(step) and step > 0):
        raise SourceError(file, f"column 'timestamp' does not increase (median step {step}); fix the data "
                                "timestamps (frame_index / fps)", episode=uid)
    rate = 1.0 / step
    if abs(rate - fps) > FPS_TOLERANCE * fps:
        raise SourceError(file, f"column 'timestamp': frames are {step:.6g} s apart ({rate:.4g} fps) but "
                                f"meta/info.json says fps={fps:g} ({abs(rate - fps) / fps:.1%} off, more than "
                                f"{FPS_TOLERANCE:.0%}); set info.json fps to the real rate or fix the timestamps",
                          episode=uid)
    return times


def vector_column(column, key: str, file: str, uid: str, max_abs: float | None) -> np.ndarray:
    """A list<float> (or scalar) column -> (T, D) float32 (text, non-numbers, ``|x| > max_abs``: SourceError)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = column.combine_chunks()
    if column.null_count:
        raise SourceError(file, f"column {key!r} has {column.null_count} null rows", episode=uid)
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type) \
            or pa.types.is_fixed_size_list(column.type):
        lengths = np.unique(pc.list_value_length(column).to_numpy(zero_copy_only=False))
        if len(lengths) > 1:
            raise SourceError(file, f"column {key!r} rows have different lengths {lengths.tolist()}", episode=uid)
        values = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)
    else:
        values = column.to_numpy(zero_copy_only=False).reshape(len(column), 1)
    return vector_field(values, key, file, uid, max_abs)


def episode_row_groups(metadata, index: int) -> list[int]:
    """Row groups of a parquet file whose ``episode_index`` min/max statistics may include ``index``
    (all of them when the file has no statistics)."""
    groups = []
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        stats = next((row_group.column(c).statistics for c in range(row_group.num_columns)
                      if row_group.column(c).path_in_schema == "episode_index"), None)
        if stats is None or not stats.has_min_max or stats.min <= index <= stats.max:
            groups.append(group)
    return groups


def decode_images(column, key: str, root: str, file: str) -> np.ndarray:
    """An ``image`` feature column (Hugging Face ``Image``: struct of PNG/JPEG bytes and a path) -> (T, H, W, 3)."""
    import cv2

    frames = []
    for row, item in enumerate(column.to_pylist()):
        data = item.get("bytes") if isinstance(item, dict) else item
        if data is None and isinstance(item, dict) and item.get("path"):
            path = item["path"] if os.path.isabs(item["path"]) else os.path.join(root, item["path"])
            with open(path, "rb") as fh:
                data = fh.read()
        image = cv2.imdecode(np.frombuffer(data or b"", np.uint8), cv2.IMREAD_COLOR) if data else None
        if image is None:
            raise SourceError(file, f"image {key!r} at frame {row} cannot be decoded (no bytes or not an image)")
        frames.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise SourceError(file, f"images of {key!r} have different sizes {sorted(shapes)}")
    return np.stack(frames)
