"""Tiny randomly initialised models, built offline, that go through the same loading code as the real ones.

Why: hub weights cannot be downloaded where this repository is built and tested, yet the CLIP code path (one model,
two towers, its own tokenizer and preprocessing) must run end to end. ``make_tiny_clip(folder)`` writes a folder that
``utils.encoders.load_encoders(folder)`` reads exactly as it reads ``openai/clip-vit-base-patch32`` saved to disk:
``config.json`` + ``model.safetensors`` from ``CLIPModel.save_pretrained`` and a real byte-level BPE
``CLIPTokenizer``. Its embeddings mean nothing (random weights); shapes, normalisation, determinism and the
plumbing are what it is for. ``make_tiny_llava(folder)`` does the same for the vision-language models of
``utils.prep.vlm`` (a LLaVA: CLIP vision tower, Llama language model, byte-level tokenizer, chat template).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["make_tiny_clip", "make_tiny_llava"]

# A handful of merges so that common words become single tokens; everything else falls back to single bytes.
_MERGES = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("i", "n"), ("o", "n</w>"), ("e", "r"),
           ("d", "o"), ("do", "g</w>"), ("c", "a"), ("ca", "t</w>")]


def _byte_symbols() -> list[str]:
    """GPT-2 / CLIP byte-level alphabet: each of the 256 bytes as one printable character (printable Latin-1 bytes
    stand for themselves, the rest are shifted past 255), so any UTF-8 text tokenizes without an unknown token."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), 256))
    symbols, shifted = [], 0
    for b in range(256):
        if b in printable:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def _tiny_tokenizer(max_length: int):
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + [a + b for a, b in _MERGES]  # a merge's token is its pair joined
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=list(_MERGES), model_max_length=max_length)


def make_tiny_clip(folder: str | os.PathLike, seed: int = 0, image_size: int = 32, projection_dim: int = 16,
                   max_length: int = 24) -> Path:
    """Save a tiny random ``CLIPModel`` (1-layer towers, width 32, patch 8) and its tokenizer to ``folder``.

    The same ``seed`` gives the same weights, hence the same encoder fingerprints and cache keys.
    """
    from transformers import CLIPConfig, CLIPModel

    folder = Path(folder)
    tokenizer = _tiny_tokenizer(max_length)
    vocab = tokenizer.get_vocab()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=max_length,
                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                         pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image_size, patch_size=8),
        projection_dim=projection_dim)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


#: A plain chat template: "user: <image>\nquestion\nassistant:" (what ``apply_chat_template`` renders).
_CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {% if m['content'] is string %}{{ m['content'] }}"
                  "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}"
                  "{{ c['text'] }}{% endif %}{% endfor %}{% endif %}\n{% endfor %}"
                  "{% if add_generation_prompt %}assistant:{% endif %}")


def make_tiny_llava(folder: str | os.PathLike, seed: int = 0, image_size: int = 32) -> Path:
    """Save a tiny random ``LlavaForConditionalGeneration`` and its ``LlavaProcessor`` to ``folder``.

    Vision: a 1-layer CLIP tower (width 32, patch 8: 16 image tokens); language: a 2-layer Llama (width 32) over a
    byte-level vocabulary (the 256 bytes plus ``<pad> <s> </s> <image>``), so any text round-trips. It loads with
    ``AutoProcessor`` / ``AutoModelForImageTextToText`` as a hub LLaVA does; its answers are random bytes.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor,
                              PreTrainedTokenizerFast)

    folder = Path(folder)
    specials = ["<pad>", "<s>", "</s>", "<image>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        extra_special_tokens=["<image>"], padding_side="right",
                                        model_max_length=4096)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": image_size},
                                           crop_size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=_CHAT_TEMPLATE)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=image_size, patch_size=8),
        text_config=dict(model_type="llama", vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        image_token_index=vocab["<image>"], vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
