"""FastTokenizer gives the same ids as the published UniversalActionProcessor.

The reference steps are re-implemented here, independently of motiondata, from the published algorithm:
per-chunk DCT (scipy, norm="ortho") along time, ``* scale``, ``np.around``, C-order flatten,
``chr(max(v - min_token, 0))``, then one ``PreTrainedTokenizerFast(...)(text)`` call per chunk.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.fft import dct, idct
from tokenizers import ByteLevelBPETokenizer
from tokenizers.trainers import BpeTrainer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from motiondata.tokenize.fast import FastTokenizer
from tests.factories_fast import smooth_chunks

SCALE, VOCAB = 10, 256


def reference_fit(chunks, scale=SCALE, vocab_size=VOCAB):
    coeffs = [dct(c, axis=0, norm="ortho").flatten() for c in chunks]
    quantised = np.around(np.concatenate(coeffs) * scale)
    lo, hi = int(quantised.min()), int(quantised.max())
    texts = ("".join(chr(int(v)) for v in np.around(c * scale) - lo) for c in coeffs)
    bpe = ByteLevelBPETokenizer()
    trainer = BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False, special_tokens=[],
                         initial_alphabet=[chr(i) for i in range(hi - lo + 1)], max_token_length=10000)
    bpe._tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, clean_up_tokenization_spaces=False), lo


def reference_encode(hf, min_token, chunks, scale=SCALE):
    out = []
    for chunk in chunks:
        coeff = np.around(dct(chunk[None], axis=1, norm="ortho") * scale)[0]
        text = "".join(chr(int(v)) for v in np.maximum(coeff.flatten() - min_token, 0))
        out.append(hf(text)["input_ids"])
    return out


def reference_decode(hf, min_token, ids_list, t, d, scale=SCALE):
    out = []
    for ids in ids_list:
        try:
            coeff = np.array([ord(c) for c in hf.decode(ids)]) + min_token
            coeff = coeff.reshape(-1, d)
            assert coeff.shape == (t, d)
        except Exception:  # the reference's silent fallback
            coeff = np.zeros((t, d))
        out.append(idct(coeff / scale, axis=0, norm="ortho"))
    return np.stack(out)


def save_reference_layout(root, hf, min_token, subdir=""):
    """What UniversalActionProcessor.save_pretrained leaves on disk (tokenizer files + processor config)."""
    hf.save_pretrained(str(root / subdir) if subdir else str(root))
    auto_map = {"AutoProcessor": "processing_action_tokenizer.UniversalActionProcessor"}
    config = {"action_dim": None, "auto_map": auto_map,
              "min_token": min_token, "processor_class": "UniversalActionProcessor", "scale": SCALE,
              "time_horizon": None, "vocab_size": VOCAB}
    (root / "processor_config.json").write_text(json.dumps(config, indent=2))
    return root


@pytest.fixture(scope="module")
def train():
    return smooth_chunks(400, 10, 7, seed=1)


@pytest.fixture(scope="module")
def reference(train):
    return reference_fit(list(train))


@pytest.fixture(scope="module")
def mine(train):
    return FastTokenizer.fit(train, scale=SCALE, vocab_size=VOCAB)


def test_fit_matches_reference_vocab_and_merges(mine, reference):
    hf, lo = reference
    assert mine.min_token == lo
    ref_model = json.loads(hf.backend_tokenizer.to_str())["model"]
    my_model = json.loads(mine.bpe.to_str())["model"]
    assert my_model["vocab"] == ref_model["vocab"]
    assert my_model["merges"] == ref_model["merges"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_encode_ids_identical_to_reference(mine, reference, dtype):
    hf, lo = reference
    fresh = smooth_chunks(150, 10, 7, seed=7, dtype=dtype)
    fresh[:3] *= 2.5  # beyond the fitted range: clipped at 0 / multi-byte characters, same as the reference
    assert mine.encode(fresh) == reference_encode(hf, lo, fresh)


def test_list_of_variable_length_chunks_matches_reference(mine, reference):
    hf, lo = reference
    chunks = [smooth_chunks(1, t, 7, seed=t)[0] for t in (10, 5, 10, 16, 5)]
    assert mine.encode(chunks) == reference_encode(hf, lo, chunks)


@pytest.mark.parametrize("subdir", ["", "bpe_tokenizer"])
def test_load_reference_layout_gives_reference_ids(tmp_path, reference, subdir):
    hf, lo = reference
    loaded = FastTokenizer.load(save_reference_layout(tmp_path, hf, lo, subdir))
    assert (loaded.scale, loaded.min_token, loaded.vocab_size) == (SCALE, lo, VOCAB)
    fresh = smooth_chunks(100, 10, 7, seed=3)
    ids = loaded.encode(fresh)
    assert ids == reference_encode(hf, lo, fresh)
    np.testing.assert_array_equal(loaded.decode(ids, 10, 7), reference_decode(hf, lo, ids, 10, 7))


def test_saved_directory_loads_in_transformers(tmp_path, mine):
    mine.save(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    assert config["processor_class"] == "UniversalActionProcessor"
    assert {"scale", "vocab_size", "min_token", "time_horizon", "action_dim", "auto_map"} <= set(config)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    fresh = smooth_chunks(60, 10, 7, seed=5)
    assert reference_encode(hf, config["min_token"], fresh) == mine.encode(fresh)


def test_decode_matches_reference_on_valid_ids(mine, reference, train):
    hf, lo = reference
    ids = reference_encode(hf, lo, train[:50])
    np.testing.assert_allclose(mine.decode(ids, 10, 7), reference_decode(hf, lo, ids, 10, 7), atol=1e-12)


def test_coefficient_the_vocab_lacks_is_reported_not_zeroed(mine, reference):
    """A coefficient outside the fitted alphabet can be dropped by the BPE (no unk token): the reference
    then decodes the whole chunk to zeros without a word; strict decode names the sequence instead."""
    hf, lo = reference
    fresh = smooth_chunks(200, 10, 7, seed=9)
    ids = reference_encode(hf, lo, fresh)
    short = [i for i, row in enumerate(ids) if len(hf.decode(row)) != 70]
    assert short, "expected at least one chunk with a dropped coefficient in this data"
    assert not reference_decode(hf, lo, [ids[short[0]]], 10, 7).any()
    with pytest.raises(ValueError, match=rf"token sequence {short[0]}: got \d+ coefficients, expected T\*D = 70"):
        mine.decode(ids, 10, 7)


# ------------------------------------------------------------------ the vectorised BPE twin
ADVERSARIAL = [0x20, 0x27, *map(ord, "strevmldaS1!.\t\n"), 0x0B, 0x1C, 0x1F, 0x85, 0xA0, 0xE9, 0xD7, 0x2B, 0x130]


def adversarial_codes(rng, rows, length, bound=0x140):
    """Texts heavy in what the GPT-2 split treats specially: spaces before runs, whitespace runs,
    apostrophe contractions ('s 't 're 've 'm 'll 'd), digits, letters, other characters."""
    special = rng.choice(ADVERSARIAL, size=(rows, length))
    anything = rng.integers(0, bound, size=(rows, length))
    return np.where(rng.random((rows, length)) < 0.8, special, anything)


@pytest.fixture(scope="module")
def adversarial_bpe():
    from motiondata.tokenize.fast import _train_bpe, codes_to_texts

    train = adversarial_codes(np.random.default_rng(0), 3000, 40)
    return _train_bpe(codes_to_texts(train), 0x140, 700, 2)


@pytest.mark.parametrize("variant", ["default", "one-merge-per-round", "sorted-merge-table", "tiny-cache",
                                     "vocab-lacks-characters"])
def test_vectorised_bpe_matches_rust_on_adversarial_texts(adversarial_bpe, variant, monkeypatch):
    from motiondata.tokenize import bpe_vectorized
    from motiondata.tokenize.fast import _train_bpe, codes_to_texts

    if variant == "vocab-lacks-characters":  # unknown symbols are dropped and their neighbours meet
        narrow = adversarial_codes(np.random.default_rng(9), 2000, 40) % 0x60
        adversarial_bpe = _train_bpe(codes_to_texts(narrow), 0x30, 300, 2)

    if variant == "sorted-merge-table":
        monkeypatch.setattr(bpe_vectorized, "_DENSE_MAX_VOCAB", 16)
    if variant == "tiny-cache":
        monkeypatch.setattr(bpe_vectorized, "_CACHE_MAX_CHARS", 3000)
    assert bpe_vectorized.supported(adversarial_bpe)
    vector = bpe_vectorized.VectorBPE(adversarial_bpe, 0x140)
    assert vector.is_exact() and vector.table.monotone
    if variant == "one-merge-per-round":
        vector.table.monotone = False  # the general path: exact for any merge table
    for seed in range(3):
        codes = adversarial_codes(np.random.default_rng(seed + 1), 600, int(20 + 25 * seed))
        rust = [e.ids for e in adversarial_bpe.encode_batch(codes_to_texts(codes))]
        assert vector.encode(codes) == rust  # cold cache, then warm on the next seeds


def test_vectorised_split_matches_rust_pre_tokenizer():
    from tokenizers import pre_tokenizers

    from motiondata.tokenize.bpe_vectorized import char_classes, piece_starts
    from motiondata.tokenize.fast import codes_to_texts

    probe = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    codes = adversarial_codes(np.random.default_rng(5), 400, 30)
    starts = piece_starts(codes, char_classes(0x140))
    for row, text in enumerate(codes_to_texts(codes)):
        expected = [begin for _, (begin, _) in probe.pre_tokenize_str(text)]
        assert np.flatnonzero(starts[row]).tolist() == expected, text
