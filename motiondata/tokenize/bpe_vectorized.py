"""Exact numpy twin of the ``tokenizers`` byte-level BPE encode pipeline, for whole batches of FAST texts.

The Rust tokenizer costs tens of microseconds per input (string bookkeeping per call), which dominates FAST
encoding. FAST texts are short strings over a small alphabet, so the same result can be computed for a
whole batch with array operations:

1. Split: the ByteLevel pre-tokenizer's GPT-2 pattern
   ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+`` as run-length rules over
   per-character classes (letter / number / other / whitespace). The classes are probed from the Rust
   pre-tokenizer itself, so they follow its Unicode tables.
2. Deduplicate the pieces of the batch (hash + exact verification).
3. BPE each distinct piece: UTF-8 bytes -> byte-level symbols -> vocabulary ids (unknown symbols dropped,
   as the Rust model does without an unk token), then repeatedly merge the pair with the lowest merge rank,
   leftmost first. This is the order of the Rust ``Word::merge_all`` heap (a stale heap entry can never
   pass its validity check with a different split of the same span), done as one merge per piece per round.
4. Concatenate each text's piece tokens.

Only pipelines exactly like the reference's qualify (:func:`supported`); the caller checks the result
against the Rust tokenizer once per instance and falls back to it on any disagreement.
"""

from __future__ import annotations

import functools
import json

import numpy as np
from tokenizers import Tokenizer, pre_tokenizers

LETTER, NUMBER, OTHER, SPACE = 0, 1, 2, 3
_INF = np.iinfo(np.int64).max
_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)
_HASH_LEN = np.uint64(0xC2B2AE3D27D4EB4F)
_CONTRACTIONS_2 = tuple(map(ord, "stmd"))  # 's 't 'm 'd
_CONTRACTIONS_3 = tuple((ord(a), ord(b)) for a, b in ("re", "ve", "ll"))


def supported(tokenizer: Tokenizer) -> bool:
    """True for the reference pipeline: no normaliser, no added tokens, ByteLevel split without prefix
    space, plain BPE (no dropout, unk, prefixes/suffixes, byte fallback or ignore_merges)."""
    config = json.loads(tokenizer.to_str())
    pre, model = config.get("pre_tokenizer") or {}, config.get("model") or {}
    return (config.get("normalizer") is None and not config.get("added_tokens")
            and pre.get("type") == "ByteLevel" and not pre.get("add_prefix_space") and pre.get("use_regex", True)
            and model.get("type") == "BPE" and model.get("dropout") is None and model.get("unk_token") is None
            and not model.get("continuing_subword_prefix") and not model.get("end_of_word_suffix")
            and not model.get("byte_fallback") and not model.get("ignore_merges"))


@functools.lru_cache(maxsize=8)
def char_classes(bound: int) -> np.ndarray:
    """Class of every code point below ``bound``, probed from the Rust ByteLevel pre-tokenizer: a character
    joins a leading ``a`` / ``1`` / ``!`` into one piece iff it is a letter / number / other."""
    probe = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    classes = np.full(bound, SPACE, np.uint8)
    for code in range(bound):
        for kind, lead in ((LETTER, "a"), (NUMBER, "1"), (OTHER, "!")):
            if len(probe.pre_tokenize_str(lead + chr(code))) == 1:
                classes[code] = kind
                break
    return classes


def byte_level_alphabet() -> dict[int, str]:
    """GPT-2 ``bytes_to_unicode``: printable bytes map to themselves, the rest to U+0100 onwards."""
    kept = [*range(33, 127), *range(161, 173), *range(174, 256)]
    table = {b: chr(b) for b in kept}
    extra = (b for b in range(256) if b not in table)
    table.update({b: chr(256 + i) for i, b in enumerate(extra)})
    return table


class VectorBPE:
    """Batch encoder for texts given as code-point arrays ``[B, n]`` with every value below ``bound``."""

    def __init__(self, tokenizer: Tokenizer, bound: int):
        self.bound = int(bound)
        config = json.loads(tokenizer.to_str())["model"]
        vocab: dict[str, int] = config["vocab"]
        self.vocab_n = max(vocab.values()) + 1
        alphabet = byte_level_alphabet()
        self.init_ids = np.full((self.bound, 3), -1, np.int64)
        self.init_len = np.zeros(self.bound, np.int64)
        for code in range(self.bound):
            ids = [vocab[alphabet[b]] for b in chr(code).encode("utf-8") if alphabet[b] in vocab]
            self.init_ids[code, :len(ids)], self.init_len[code] = ids, len(ids)
        merges = [m.split(" ", 1) if isinstance(m, str) else m for m in config.get("merges", [])]
        keys = np.array([vocab[a] * self.vocab_n + vocab[b] for a, b in merges] or [-1], np.int64)
        order = np.argsort(keys, kind="stable")
        self.merge_keys = keys[order]  # a -1 sentinel when there are no merges: never matches a pair
        self.merge_rank = np.arange(len(keys), dtype=np.int64)[order]
        self.merge_new = np.array([vocab[a + b] for a, b in merges] or [0], np.int64)[order]

    # ------------------------------------------------------------ split
    def piece_starts(self, codes: np.ndarray) -> np.ndarray:
        """``[B, n]`` bool: True where a pre-tokenizer piece starts (row starts included)."""
        cls = char_classes(self.bound)[codes]
        space = cls == SPACE
        start = np.ones(codes.shape, bool)
        start[:, 1:] = cls[:, 1:] != cls[:, :-1]
        # \s+(?!\S): a whitespace run followed by a non-space keeps its last character apart ...
        tail = np.zeros_like(start)
        tail[:, :-1] = space[:, :-1] & ~space[:, 1:]
        start |= tail
        # ... which, when it is U+0020, becomes the optional prefix of the next letter/number/other piece.
        start[:, 1:] &= ~(tail[:, :-1] & (codes[:, :-1] == 0x20))
        self._contractions(codes, start)
        return start

    @staticmethod
    def _contractions(codes: np.ndarray, start: np.ndarray) -> None:
        """A piece starting with an apostrophe followed by s/t/m/d or re/ve/ll is that contraction alone."""
        n = codes.shape[1]
        apostrophe = start & (codes == 0x27)
        nxt = np.full(codes.shape, -1, np.int64)
        nxt2 = np.full(codes.shape, -1, np.int64)
        nxt[:, :-1], nxt2[:, :-2] = codes[:, 1:], codes[:, 2:]
        two = apostrophe & np.isin(nxt, _CONTRACTIONS_2)
        three = apostrophe & np.logical_or.reduce([(nxt == a) & (nxt2 == b) for a, b in _CONTRACTIONS_3])
        for mask, length in ((two, 2), (three, 3)):
            rows, cols = np.nonzero(mask)
            for k in range(1, length):
                start[rows, cols + k] = False
            after = cols + length < n
            start[rows[after], cols[after] + length] = True

    # ------------------------------------------------------------ encode
    def encode(self, codes: np.ndarray) -> list[list[int]] | None:
        """Token ids per row, or None if two different pieces hashed alike (the caller falls back)."""
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        rows, n = codes.shape
        if rows == 0 or n == 0:
            return [[] for _ in range(rows)]
        flat = codes.reshape(-1)
        starts = np.flatnonzero(self.piece_starts(codes).reshape(-1))
        lengths = np.diff(np.append(starts, flat.size))
        pos = np.arange(flat.size) - np.repeat(starts, lengths)
        powers = np.cumprod(np.full(n, _HASH_MUL, np.uint64)) if n else np.zeros(0, np.uint64)
        keys = np.add.reduceat(flat.astype(np.uint64) * powers[pos], starts) ^ (lengths.astype(np.uint64) * _HASH_LEN)
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        rep = first[inverse]
        if (lengths[rep] != lengths).any() or (flat != flat[np.repeat(starts[rep], lengths) + pos]).any():
            return None
        tokens, counts = self._bpe(flat, starts[first], lengths[first])
        per_piece = counts[inverse]
        offsets = (np.cumsum(counts) - counts)[inverse]
        total = int(per_piece.sum())
        gather = np.repeat(offsets - (np.cumsum(per_piece) - per_piece), per_piece) + np.arange(total)
        ids = tokens[gather].tolist()
        ends = np.cumsum(np.bincount(starts // n, weights=per_piece, minlength=rows).astype(np.int64))
        return [ids[a:b] for a, b in zip(np.concatenate([[0], ends[:-1]]), ends)]

    def _bpe(self, flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """BPE of the distinct pieces: (all tokens in piece order, token count per piece)."""
        count = len(starts)
        chars = flat[np.repeat(starts, lengths) + np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)]
        per_char = self.init_len[chars]
        symbols = self.init_ids[chars][np.arange(3)[None, :] < per_char[:, None]]
        segment = np.repeat(np.repeat(np.arange(count), lengths), per_char)
        done_sym, done_seg = [], []
        while symbols.size:
            symbols, segment, finished = self._merge_round(symbols, segment)
            done_sym.append(symbols[finished])
            done_seg.append(segment[finished])
            symbols, segment = symbols[~finished], segment[~finished]
        if not done_sym:
            return np.zeros(0, np.int64), np.zeros(count, np.int64)
        symbols, segment = np.concatenate(done_sym), np.concatenate(done_seg)
        order = np.argsort(segment, kind="stable")
        return symbols[order], np.bincount(segment, minlength=count)

    def _merge_round(self, symbols: np.ndarray, segment: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One merge (lowest rank, leftmost) in every piece that still has a mergeable pair.
        Returns the new symbols, their segments, and a mask of symbols whose piece is finished."""
        size = symbols.size
        seg_start = np.flatnonzero(np.r_[True, segment[1:] != segment[:-1]])
        seg_len = np.diff(np.append(seg_start, size))
        score = np.full(size, _INF, np.int64)
        keys = symbols[:-1] * self.vocab_n + symbols[1:]
        idx = np.minimum(np.searchsorted(self.merge_keys, keys), len(self.merge_keys) - 1)
        hit = (segment[1:] == segment[:-1]) & (self.merge_keys[idx] == keys)
        score[:-1] = np.where(hit, self.merge_rank[idx] * size + np.arange(size - 1), _INF)
        best = np.minimum.reduceat(score, seg_start)
        active = best < _INF
        finished = np.repeat(~active, seg_len)
        left = best[active] % size
        if left.size:
            symbols = symbols.copy()
            symbols[left] = self.merge_new[idx[left]]
            keep = np.ones(size, bool)
            keep[left + 1] = False
            symbols, segment, finished = symbols[keep], segment[keep], finished[keep]
        return symbols, segment, finished
