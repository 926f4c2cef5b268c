"""FAST action tokenizer: DCT along time, scale and round, then byte-level BPE over the coefficients.

Token-for-token compatible with the published ``UniversalActionProcessor`` (physical-intelligence/fast):
the same DCT (``scipy.fft.dct(norm="ortho")`` along time), the same rounding (``np.around``), the same
flattening (C order: every dim of frequency 0, then frequency 1, ...), the same characters
(``chr(max(v - min_token, 0))``) and the same ``tokenizers`` BPE, so a directory saved by either side loads
in the other and gives identical ids. Differences are in speed and safety only:

- ``encode`` is batched: one DCT over the whole batch, vectorised string building, and the BPE as an exact
  numpy twin of the ``tokenizers`` pipeline (``bpe_vectorized``; checked against the Rust tokenizer on the
  first batch, with ``Tokenizer.encode_batch`` as the fallback) instead of one Python call per chunk.
- ``decode`` reports undecodable sequences (``strict=True``) instead of silently returning zeros, and a
  relaxed mode truncates / zero-pads instead of giving up.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from scipy.fft import dct, idct
from tokenizers import Tokenizer
from tokenizers.implementations import ByteLevelBPETokenizer
from tokenizers.trainers import BpeTrainer

from motiondata.errors import MotionDataError
from motiondata.store.layout import atomic_write_text
from motiondata.tokenize import bpe_vectorized

log = logging.getLogger(__name__)

PROCESSOR_CONFIG = "processor_config.json"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
FIT_INFO = "fast_fit.json"  # motiondata extras (max_token, fit shapes); the reference ignores it
NORM_STATS = "norm_stats.json"  # openpi norm stats used at fit time (see normalize.py)
AUTO_MAP = {"AutoProcessor": "processing_action_tokenizer.UniversalActionProcessor"}
_TOKENIZER_SUBDIRS = ("", "bpe_tokenizer", "tokenizer")  # newer ProcessorMixin saves into a subfolder
_MAX_CODEPOINT = 0x10FFFF
_REPLACEMENT = 0xFFFD  # what the byte-level decoder yields for invalid UTF-8
_VECTOR_BOUND_MAX = 0xD800  # the vectorised path covers code points below this (no surrogates)
_SELF_CHECK_ROWS = 64


class FastTokenizerError(MotionDataError, ValueError):
    """A FAST tokenizer could not fit, encode, load or decode. Says what is wrong and how to fix it."""


class FastDecodeError(FastTokenizerError):
    """A token sequence does not decode to a ``time_horizon x action_dim`` chunk (strict mode)."""

    def __init__(self, index: int, problem: str, fix: str):
        self.index, self.problem = index, problem
        super().__init__(f"token sequence {index}: {problem}. Fix: {fix}")


def _as_groups(chunks: np.ndarray | Sequence[np.ndarray]) -> tuple[int, list[tuple[list[int], np.ndarray]]]:
    """Split chunks into batches of equal shape and dtype: (count, [(positions, [B, T, D] array)])."""
    if isinstance(chunks, np.ndarray):
        if chunks.ndim == 2:
            chunks = chunks[None]
        if chunks.ndim != 3:
            raise FastTokenizerError(f"chunks have shape {chunks.shape}; expected [batch, time, action_dim] "
                                     "or one [time, action_dim] chunk")
        return len(chunks), [(list(range(len(chunks))), chunks)]
    groups: dict[tuple, list[int]] = defaultdict(list)
    arrays = [np.asarray(c) for c in chunks]
    for i, arr in enumerate(arrays):
        if arr.ndim != 2:
            raise FastTokenizerError(f"chunk {i} has shape {arr.shape}; each chunk must be [time, action_dim]")
        groups[(arr.shape, arr.dtype.str)].append(i)
    return len(arrays), [(pos, np.stack([arrays[i] for i in pos])) for pos in groups.values()]


def _check_finite(values: np.ndarray, positions: list[int]) -> None:
    """``values``: one number per chunk (a batch, or per-row extremes of its coefficients)."""
    finite = np.isfinite(values).all(axis=tuple(range(1, np.ndim(values))))
    if not finite.all():
        bad = positions[int(np.flatnonzero(~finite)[0])]
        raise FastTokenizerError(f"chunk {bad} holds NaN or inf. Fix: clean the actions (or drop the episode) "
                                 "before tokenizing")


def quantize(batch: np.ndarray, scale: float) -> np.ndarray:
    """DCT-II along time (orthonormal), times ``scale``, rounded: ``[B, T, D]`` -> ``[B, T*D]`` float.

    Computed in the input's own precision, exactly as the reference does, so rounding ties agree."""
    coeff = dct(batch, axis=1, norm="ortho")
    return np.around(coeff * scale).reshape(len(batch), batch.shape[1] * batch.shape[2])


def codes_to_texts(codes: np.ndarray) -> list[str]:
    """Rows of non-negative integer code points ``[B, n]`` -> one string per row, without a Python loop
    over values (one UTF-32 decode of the whole buffer, then slicing)."""
    codes = np.asarray(codes)
    if codes.size and (codes.max() > _MAX_CODEPOINT or ((codes >= 0xD800) & (codes <= 0xDFFF)).any()):
        raise FastTokenizerError(
            f"a DCT coefficient is {int(codes.max())} steps above min_token, beyond what a character can "
            "hold; the actions are far outside the range the tokenizer was fitted on. Fix: normalise the "
            "actions (quantile normalisation to about [-1, 1]) before encoding")
    n = codes.shape[1] if codes.ndim == 2 else 0
    flat = np.ascontiguousarray(codes, dtype="<u4").tobytes().decode("utf-32-le")
    return [flat[i * n:(i + 1) * n] for i in range(len(codes))]


def texts_to_codes(texts: Sequence[str]) -> list[np.ndarray]:
    """Strings -> arrays of code points (one UTF-32 encode of the concatenation)."""
    flat = np.frombuffer("".join(texts).encode("utf-32-le"), dtype="<u4").astype(np.int64)
    ends = np.cumsum([len(t) for t in texts])
    return np.split(flat, ends[:-1]) if len(texts) else []


def _train_bpe(texts: Iterable[str], alphabet_size: int, vocab_size: int, min_frequency: int) -> Tokenizer:
    bpe = ByteLevelBPETokenizer()  # byte-level pre-tokenizer, decoder and post-processor, as the reference
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=[chr(i) for i in range(alphabet_size)],
        max_token_length=10000,
    )
    bpe._tokenizer.train_from_iterator(texts, trainer=trainer)  # the wrapper's own train() drops the alphabet
    return bpe._tokenizer


class FastTokenizer:
    """DCT + BPE action tokenizer. Build with :meth:`fit` or :meth:`load`."""

    def __init__(self, bpe: Tokenizer, scale: float = 10, vocab_size: int = 1024, min_token: int = 0, *,
                 max_token: int | None = None, time_horizon: int | None = None, action_dim: int | None = None):
        self.bpe = bpe
        self.bpe.no_truncation()
        self.bpe.no_padding()
        self.scale, self.vocab_size, self.min_token = scale, int(vocab_size), int(min_token)
        self.max_token = None if max_token is None else int(max_token)
        self.time_horizon, self.action_dim = time_horizon, action_dim
        self._vector: bpe_vectorized.VectorBPE | None = None
        self._vector_state = "unchecked" if bpe_vectorized.supported(bpe) else "off"

    @property
    def bpe_vocab_size(self) -> int:
        """Number of ids the BPE really has (can be below ``vocab_size`` when the data supports fewer merges)."""
        return self.bpe.get_vocab_size()

    # ---------------------------------------------------------------- fit
    @classmethod
    def fit(cls, chunks: np.ndarray | Sequence[np.ndarray], scale: float = 10, vocab_size: int = 1024,
            min_frequency: int = 2) -> "FastTokenizer":
        """Fit on normalised chunks (``[N, T, D]`` or a list of ``[T, D]`` arrays, T may vary)."""
        count, groups = _as_groups(chunks)
        if count == 0:
            raise FastTokenizerError("no chunks to fit on. Fix: pass at least one [time, action_dim] chunk")
        for positions, batch in groups:
            _check_finite(batch, positions)
        quantized = [(positions, quantize(batch, scale)) for positions, batch in groups]
        min_token = int(min(q.min() for _, q in quantized))
        max_token = int(max(q.max() for _, q in quantized))
        if max_token - min_token > vocab_size:
            raise FastTokenizerError(
                f"vocab_size {vocab_size} is smaller than the coefficient range {max_token - min_token} "
                f"(min {min_token}, max {max_token} at scale {scale}). Fix: raise vocab_size, lower scale, "
                "or normalise the actions to about [-1, 1]")
        if max_token - min_token + 100 > vocab_size:
            log.warning("alphabet size %d is almost as large as vocab_size %d; consider a larger vocab_size",
                        max_token - min_token, vocab_size)
        texts: list[str] = [""] * count
        for positions, q in quantized:
            for pos, text in zip(positions, codes_to_texts(q - min_token)):
                texts[pos] = text  # the reference trains on the chunks in their given order
        bpe = _train_bpe(texts, max_token - min_token + 1, vocab_size, min_frequency)
        shapes = {batch.shape[1] for _, batch in groups}, {batch.shape[2] for _, batch in groups}
        horizon, dim = (s.pop() if len(s) == 1 else None for s in shapes)
        log.info("fitted FAST on %d chunks: min_token %d, max_token %d, %d ids", count, min_token, max_token,
                 bpe.get_vocab_size())
        return cls(bpe, scale, vocab_size, min_token, max_token=max_token, time_horizon=horizon, action_dim=dim)

    # ---------------------------------------------------------------- encode
    def encode(self, chunks: np.ndarray | Sequence[np.ndarray]) -> list[list[int]]:
        """Token ids per chunk; identical to the reference ``UniversalActionProcessor.__call__``."""
        count, groups = _as_groups(chunks)
        out: list[list[int]] = [[] for _ in range(count)]
        for positions, batch in groups:
            codes = quantize(batch, self.scale) - self.min_token
            low, high = codes.min(axis=1, initial=0), codes.max(axis=1, initial=0)
            _check_finite(low + high, positions)  # NaN / inf propagate into the row extremes
            self._warn_out_of_range(low, high)
            codes = np.clip(codes, 0, _MAX_CODEPOINT + 1).astype(np.int32)  # beyond: codes_to_texts raises
            for pos, ids in zip(positions, self._encode_codes(codes, high)):
                out[pos] = ids
        return out

    def _encode_codes(self, codes: np.ndarray, row_max: np.ndarray) -> list[list[int]]:
        """Vectorised path for rows inside the alphabet, Rust ``encode_batch`` for the rest."""
        vector = self._vector_encoder(codes, row_max)
        if vector is None:
            return self._encode_rust(codes)
        inside = row_max < vector.bound
        out: list[list[int]] = [[] for _ in range(len(codes))]
        rows = np.flatnonzero(inside)
        fast = vector.encode(codes[rows]) if rows.size else []
        if fast is None:  # a hash collision between two different pieces: astronomically rare
            return self._encode_rust(codes)
        for row, ids in zip(rows, fast):
            out[row] = ids
        rows = np.flatnonzero(~inside)
        for row, ids in zip(rows, self._encode_rust(codes[rows])):
            out[row] = ids
        return out

    def _vector_encoder(self, codes: np.ndarray, row_max: np.ndarray) -> bpe_vectorized.VectorBPE | None:
        """Build the vectorised encoder once and check it against the Rust tokenizer on the first rows."""
        if self._vector_state == "off":
            return None
        if self._vector is None:
            alphabet = self.max_token - self.min_token + 1 if self.max_token is not None else self.vocab_size + 1
            self._vector = bpe_vectorized.VectorBPE(self.bpe, min(max(alphabet, 1), _VECTOR_BOUND_MAX))
            if not self._vector.is_exact():
                self._vector_state = "off"
                return None
        if self._vector_state == "unchecked":
            rows = np.flatnonzero(row_max < self._vector.bound)[:_SELF_CHECK_ROWS]
            if rows.size == 0:
                return self._vector
            if self._vector.encode(codes[rows]) != self._encode_rust(codes[rows]):
                log.warning("vectorised BPE disagrees with the Rust tokenizer on this vocabulary; using Rust")
                self._vector_state = "off"
                return None
            self._vector_state = "checked"
        return self._vector

    def _encode_rust(self, codes: np.ndarray) -> list[list[int]]:
        """The reference path: texts through the Rust tokenizer (``encode_batch``, parallel over texts)."""
        if len(codes) == 0:
            return []
        encode_batch = getattr(self.bpe, "encode_batch_fast", self.bpe.encode_batch)
        return [enc.ids for enc in encode_batch(codes_to_texts(codes))]

    def _warn_out_of_range(self, row_min: np.ndarray, row_max: np.ndarray) -> None:
        """The reference clips coefficients below ``min_token`` to it, and its BPE silently drops
        characters beyond the fitted alphabet; both make the chunk decode wrong. Say so (ids stay identical)."""
        low = row_min < 0
        high = row_max > self.max_token - self.min_token if self.max_token is not None else np.zeros_like(low)
        if low.any() or high.any():
            log.warning("%d of %d chunks have DCT coefficients outside the fitted range [%d, %s] (%d below, %d "
                        "above): they will not decode exactly. Normalise actions as at fit time, or refit",
                        int((low | high).sum()), len(row_min), self.min_token, self.max_token,
                        int(low.sum()), int(high.sum()))

    # ---------------------------------------------------------------- decode
    def decode(self, ids_list: Sequence[Sequence[int]], time_horizon: int | None = None,
               action_dim: int | None = None, strict: bool = True) -> np.ndarray:
        """Token ids -> chunks ``[B, T, D]`` (float64, normalised units).

        ``strict=True`` raises :class:`FastDecodeError` naming the first bad sequence. ``strict=False``
        never raises on bad ids: ids outside the vocabulary are dropped, characters that are not valid
        coefficients become 0, coefficients are clipped to the fitted range when it is known, and the
        coefficient list is truncated or zero-padded to ``T x D``."""
        t, d = self._shape(time_horizon, action_dim)
        clean = [self._valid_ids(i, ids, strict) for i, ids in enumerate(ids_list)]
        texts = self.bpe.decode_batch(clean, skip_special_tokens=False) if clean else []
        coeff = np.zeros((len(clean), t * d), dtype=np.int64)
        for i, codes in enumerate(texts_to_codes(texts)):
            coeff[i] = self._fit_row(i, codes, t, d, strict)
        return idct(coeff.reshape(-1, t, d) / self.scale, axis=1, norm="ortho")

    def _shape(self, time_horizon: int | None, action_dim: int | None) -> tuple[int, int]:
        t, d = time_horizon or self.time_horizon, action_dim or self.action_dim
        if not t or not d:
            raise FastTokenizerError("decode needs the chunk shape. Fix: pass time_horizon= and action_dim= "
                                     "(or save the tokenizer with them in processor_config.json)")
        return int(t), int(d)

    def _valid_ids(self, index: int, ids: Sequence[int], strict: bool) -> list[int]:
        values = list(ids)
        ints = [int(v) for v in values if isinstance(v, (int, np.integer))]
        if len(ints) != len(values) and strict:
            raise FastDecodeError(index, "holds values that are not integers", "pass lists of int token ids")
        n = self.bpe_vocab_size
        bad = [v for v in ints if not 0 <= v < n]
        if bad and strict:
            raise FastDecodeError(index, f"ids {bad[:5]} are outside the vocabulary [0, {n})",
                                  "decode only ids produced by this tokenizer (check the offset into a "
                                  "shared LLM vocabulary)")
        return [v for v in ints if 0 <= v < n]

    def _fit_row(self, index: int, codes: np.ndarray, t: int, d: int, strict: bool) -> np.ndarray:
        invalid = codes == _REPLACEMENT
        if strict:
            if invalid.any():
                raise FastDecodeError(index, "the ids decode to an invalid byte sequence (a multi-byte "
                                      "coefficient cut in the middle)", "decode complete token sequences")
            if codes.size != t * d:
                raise FastDecodeError(index, f"got {codes.size} coefficients, expected T*D = {t * d} "
                                      f"(time_horizon {t} x action_dim {d})",
                                      "pass the time_horizon/action_dim used at encode time, or strict=False "
                                      "to truncate / zero-pad")
            return codes + self.min_token
        values = np.where(invalid, 0, codes + self.min_token)
        if self.max_token is not None:
            values = np.clip(values, self.min_token, self.max_token)
        row = np.zeros(t * d, dtype=np.int64)
        row[:min(values.size, t * d)] = values[:t * d]
        return row

    # ---------------------------------------------------------------- save / load
    def processor_config(self) -> dict:
        """The reference's ``processor_config.json`` fields."""
        return {"action_dim": self.action_dim, "auto_map": AUTO_MAP, "min_token": self.min_token,
                "processor_class": "UniversalActionProcessor", "scale": self.scale,
                "time_horizon": self.time_horizon, "vocab_size": self.vocab_size}

    def save(self, directory: str | Path) -> Path:
        """Write the published layout: processor_config.json, tokenizer.json, tokenizer_config.json,
        special_tokens_map.json (+ fast_fit.json, ignored by the reference)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / PROCESSOR_CONFIG, self.processor_config())
        atomic_write_text(out / TOKENIZER_JSON, self.bpe.to_str(pretty=True))
        _write_json(out / TOKENIZER_CONFIG, {
            "added_tokens_decoder": {}, "clean_up_tokenization_spaces": False,
            "model_max_length": int(1e30), "processor_class": "UniversalActionProcessor",
            "tokenizer_class": "PreTrainedTokenizerFast"})
        _write_json(out / SPECIAL_TOKENS_MAP, {})
        _write_json(out / FIT_INFO, {"max_token": self.max_token, "min_token": self.min_token,
                                     "bpe_vocab_size": self.bpe_vocab_size, "format": "motiondata-fast-1"})
        return out

    @classmethod
    def load(cls, directory: str | Path) -> "FastTokenizer":
        """Read a directory saved by :meth:`save` or by the reference ``save_pretrained`` (no remote code,
        no network: only the JSON files are read)."""
        root = Path(directory)
        config = _read_json(root / PROCESSOR_CONFIG, "save the tokenizer with FastTokenizer.save() or "
                            "UniversalActionProcessor.save_pretrained()")
        missing = [k for k in ("scale", "min_token") if k not in config]
        if missing:
            raise FastTokenizerError(f"{root / PROCESSOR_CONFIG}: missing {missing}. Fix: re-save the tokenizer")
        bpe = Tokenizer.from_file(str(_find_tokenizer_json(root)))
        _check_tokenizer_config(root)
        info = _read_json(root / FIT_INFO, "") if (root / FIT_INFO).is_file() else {}
        return cls(bpe, config["scale"], config.get("vocab_size", 1024), config["min_token"],
                   max_token=info.get("max_token"), time_horizon=config.get("time_horizon"),
                   action_dim=config.get("action_dim"))


def _find_tokenizer_json(root: Path) -> Path:
    for sub in _TOKENIZER_SUBDIRS:
        candidate = root / sub / TOKENIZER_JSON
        if candidate.is_file():
            return candidate
    raise FastTokenizerError(f"{root}: no {TOKENIZER_JSON} (looked in {root} and its bpe_tokenizer/ folder). "
                             "Fix: save the tokenizer with FastTokenizer.save()")


def _check_tokenizer_config(root: Path) -> None:
    path = root / TOKENIZER_CONFIG
    if path.is_file() and _read_json(path, "").get("clean_up_tokenization_spaces"):
        log.warning("%s sets clean_up_tokenization_spaces=true, which corrupts coefficients in the reference's "
                    "decode; motiondata decodes without it", path)


def _read_json(path: Path, fix: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FastTokenizerError(f"{path}: not found. Fix: {fix}") from None
    except json.JSONDecodeError as exc:
        raise FastTokenizerError(f"{path}: invalid JSON ({exc}). Fix: {fix or 're-save the tokenizer'}") from None


def _write_json(path: Path, payload: dict) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
