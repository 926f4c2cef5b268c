"""Build the tiny random-init transformers encoders shipped for demos and tests (offline, seconds).

    python -m motiondata.encode.make_demo_encoders --out tokenizers

writes ``tokenizers/vision/demo-siglip`` (a ``SiglipVisionModel`` + ``SiglipImageProcessor``, 64x64 input,
16x16 patches) and ``tokenizers/text/demo-t5`` (a ``T5EncoderModel`` + a Unigram tokenizer trained here on a
few robot instructions, saved as a ``PreTrainedTokenizerFast`` with T5's ``<pad>`` / ``</s>`` / ``<unk>``).

They are **random-init**: the embeddings carry no meaning; they exist so the ``image_embed`` and
``text_tokens`` stages and the seed specs run end to end without downloads. Swap in real checkpoints
(SigLIP / CLIP / DINOv2, T5 / umT5) by pointing the stage's ``model:`` at their local folders.
The builders are also used by the tests (``tiny_vision_model``, ``tiny_text_encoder``) with other classes.
"""

from __future__ import annotations

import argparse
import logging
import string
from pathlib import Path

log = logging.getLogger("motiondata.make_demo_encoders")

INSTRUCTIONS = [
    "pick up the cube with the right arm and hand it to the left arm", "transfer the cube to the other arm",
    "pick up the red cube", "put the bowl on the plate", "open the top drawer of the cabinet",
    "close the microwave door", "push the blue block to the left", "stack the green block on the yellow block",
    "put the black bowl in the bottom drawer and close it", "turn on the stove and put the pot on it",
    "pick up the alphabet soup and place it in the basket", "insert the peg into the hole",
    "fold the towel in half", "wipe the table with the sponge", "pour the water into the cup",
    "move the mug to the right of the plate", "lift the lid off the pan", "hand over the screwdriver",
]
VISION = {  # kind -> (config class, model class, processor class, processor kwargs)
    "siglip": ("SiglipVisionConfig", "SiglipVisionModel", "SiglipImageProcessor", {}),
    "clip": ("CLIPVisionConfig", "CLIPVisionModelWithProjection", "CLIPImageProcessor", {"crop": True}),
    "dinov2": ("Dinov2Config", "Dinov2Model", "BitImageProcessor", {"crop": True}),
}
TEXT = {"t5": ("T5Config", "T5EncoderModel"), "umt5": ("UMT5Config", "UMT5EncoderModel")}


def _processor(cls: type, size: int, crop: bool = False) -> object:
    if crop:  # CLIP / DINOv2 style: shortest edge then centre crop
        return cls(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return cls(size={"height": size, "width": size})


def tiny_vision_model(kind: str, folder: str | Path, image_size: int = 64, patch: int = 16, hidden: int = 64,
                      seed: int = 0) -> Path:
    """A random-init vision encoder of ``kind`` (siglip, clip, dinov2) + its processor in ``folder``."""
    import torch
    import transformers

    config_name, model_name, proc_name, proc_kwargs = VISION[kind]
    torch.manual_seed(seed)
    extra = {"projection_dim": hidden // 2} if kind == "clip" else {}
    config = getattr(transformers, config_name)(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                                                num_attention_heads=4, image_size=image_size, patch_size=patch, **extra)
    model = getattr(transformers, model_name)(config)
    folder = Path(folder)
    model.save_pretrained(folder)
    _processor(getattr(transformers, proc_name), image_size, **proc_kwargs).save_pretrained(folder)
    return folder


def tiny_tokenizer(folder: str | Path, sentences: list[str] | None = None, vocab_size: int = 256) -> int:
    """A T5-style Unigram tokenizer (``</s>`` appended, ``<pad>`` = 0) trained on ``sentences``; returns its
    vocabulary size. Every lowercase letter, digit and punctuation mark is in the vocabulary, so any
    English instruction tokenizes without ``<unk>``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    alphabet = list(string.ascii_lowercase + string.digits + string.punctuation) + ["\u2581"]
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", initial_alphabet=alphabet)
    tok.train_from_iterator(sentences or INSTRUCTIONS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", tok.token_to_id("</s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)
    fast.save_pretrained(str(folder))
    return tok.get_vocab_size()


def tiny_text_encoder(folder: str | Path, kind: str = "t5", d_model: int = 64, seed: int = 0) -> Path:
    """A random-init T5 / umT5 encoder + tokenizer in ``folder``."""
    import torch
    import transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = tiny_tokenizer(folder)
    config_name, model_name = TEXT[kind]
    torch.manual_seed(seed)
    config = getattr(transformers, config_name)(vocab_size=vocab, d_model=d_model, d_kv=d_model // 4, d_ff=2 * d_model,
                                                num_layers=2, num_heads=4, is_encoder_decoder=False, use_cache=False,
                                                pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    getattr(transformers, model_name)(config).save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="tokenizers", help="the tokenizers/ folder")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    for folder in (tiny_vision_model("siglip", out / "vision" / "demo-siglip"),
                   tiny_text_encoder(out / "text" / "demo-t5")):
        for path in folder.iterdir():
            path.chmod(0o644)
        log.info("wrote %s (%d bytes)", folder, sum(p.stat().st_size for p in folder.iterdir()))


if __name__ == "__main__":
    main()
