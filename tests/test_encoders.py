"""Encoders and the feature cache, checked against independent references.

Pretrained weights are checked three ways: the file's sha256, parameters equal to the state dict read separately
from the file, and ImageNet logits equal to a plain torchvision model given those weights (and unlike random init).
Timing claims (cache hit >= 20x faster) live in benchmarks/bench_cache.py; here we only check the model is not run.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms.functional as TF
from torch import nn

from utils import encoders as E
from utils import store

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture(scope="module")
def mobilenet():
    return E.load_image_encoder("mobilenet_v2", device="cpu")


@pytest.fixture(scope="module")
def minilm():
    return E.load_text_encoder("all-MiniLM-L6-v2", device="cpu")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("MMER_CACHE", str(folder))
    return folder


def images(n=4, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


class ForwardCounter:
    """Counts forward calls of a module and the rows they carried (the cache must not run the model on a hit)."""

    def __init__(self, module):
        self.calls = self.rows = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.calls += 1
        self.rows += len(args[0])


# ------------------------------------------------------------------------------------------------ image encoder


def test_image_encoder_shapes_and_attributes(mobilenet):
    assert (mobilenet.name, mobilenet.dim) == ("mobilenet_v2", 1280)
    assert mobilenet.fingerprint.startswith("mobilenet_v2:b0353104")
    assert not mobilenet.training and not any(p.requires_grad for p in mobilenet.parameters())
    with torch.inference_mode():
        for h, w in [(224, 224), (32, 32), (64, 48)]:
            out = mobilenet(torch.rand(2, 3, h, w))
            assert out.shape == (2, 1280) and out.dtype == torch.float32
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        mobilenet(torch.rand(2, 224, 224, 3))


def test_to_tensor_layout_and_range(tmp_path):
    arr = images(2, 8)
    t = E.images_to_device(arr, "cpu")
    assert t.shape == (2, 3, 8, 8) and t.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(t.permute(0, 2, 3, 1).numpy() * 255, arr.astype(np.float32))
    np.save(tmp_path / "a.npy", arr)
    mm = np.load(tmp_path / "a.npy", mmap_mode="r", allow_pickle=False)  # read-only rows are copied, not refused
    np.testing.assert_array_equal(E.images_to_device(mm[1:], "cpu").numpy(), t[1:].numpy())


def test_image_encoder_deterministic(mobilenet):
    x = torch.rand(3, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(mobilenet(x), mobilenet(x))
    arr = images(5, 32)
    np.testing.assert_array_equal(E.image_features(mobilenet, arr, cache=False),
                                  E.image_features(mobilenet, arr, cache=False))
    # batch size changes the kernels' summation order only
    np.testing.assert_allclose(E.image_features(mobilenet, arr, batch_size=2, cache=False),
                               E.image_features(mobilenet, arr, batch_size=5, cache=False), atol=1e-4)


@pytest.mark.parametrize("batch_size", [2, 3])
def test_repeated_images_are_encoded_once(mobilenet, tmp_path, batch_size):
    """Emotic's scene repeats for every person in a photo: each distinct image runs through the model once (batches
    then span the skipped rows) and every copy gets its features; checked against each image encoded alone."""
    distinct = images(4, 32, seed=3)
    order = [0, 1, 0, 0, 2, 1, 3, 3, 0, 2]  # repeats next to each other, far apart and at the very end
    arr = distinct[order]
    np.save(tmp_path / "rep.npy", arr)
    mm = np.load(tmp_path / "rep.npy", mmap_mode="r", allow_pickle=False)
    alone = np.concatenate([E.image_features(mobilenet, distinct[i:i + 1], cache=False) for i in range(4)])
    for source in (arr, mm):
        counter = ForwardCounter(mobilenet)
        try:
            got = E.image_features(mobilenet, source, batch_size=batch_size, cache=False)
        finally:
            counter.handle.remove()
        assert counter.rows == 4 and counter.calls == -(-4 // batch_size)
        np.testing.assert_allclose(got, alone[order], atol=1e-4)
        for i, j in [(0, 2), (0, 3), (0, 8), (1, 5), (6, 7), (4, 9)]:
            assert got[i].tobytes() == got[j].tobytes()
    one_pixel = arr.copy()
    one_pixel[3, 0, 0, 0] ^= 1  # no longer a copy of row 0
    counter = ForwardCounter(mobilenet)
    try:
        E.image_features(mobilenet, one_pixel, batch_size=batch_size, cache=False)
    finally:
        counter.handle.remove()
    assert counter.rows == 5


def test_prefix_maps_of_repeated_images_follow_their_first_occurrence(mobilenet):
    """The poisoning prefix maps skip repeats the same way: ``RowDigests.distinct`` + ``copy_repeats`` equal the maps
    of every row computed one batch after another."""
    prefix, _ = mobilenet.split()
    arr = images(3, 32, seed=4)[[2, 0, 2, 1, 0]]
    rows, got = E.RowDigests(arr), None
    for idx, maps in E.batched_outputs(prefix, arr, "cpu", 2, None, autocast=False, rows=rows.distinct()):
        got = np.zeros((len(arr), *maps.shape[1:]), np.float32) if got is None else got
        got[idx] = maps
    assert rows.source.tolist() == [0, 1, 0, 3, 1]
    every = np.concatenate([maps for _, maps in E.batched_outputs(prefix, arr, "cpu", 2, None, autocast=False)])
    np.testing.assert_allclose(rows.copy_repeats(got), every, atol=1e-4)


def test_pretrained_weights_really_loaded(mobilenet):
    path = E.packaged_mobilenet_file()
    assert path.name == "mobilenet_v2-b0353104.pth"
    assert hashlib.sha256(path.read_bytes()).hexdigest().startswith("b0353104")
    state = torch.load(path, map_location="cpu", weights_only=True)  # read independently of utils.encoders
    ours = mobilenet.backbone.state_dict()
    for key in ("features.0.0.weight", "features.18.1.running_var", "features.9.conv.1.0.weight"):
        assert torch.equal(ours[key], state[key]), key
    assert torch.equal(mobilenet.head[1].weight, state["classifier.1.weight"])

    # ImageNet logits: our encoder + kept head == plain torchvision model with the file's weights
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(state)
    reference.eval()
    torch.manual_seed(0)
    random_init = torchvision.models.mobilenet_v2().eval()
    x = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ours_logits = mobilenet.head(mobilenet(x))
        ref_logits = reference(TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD))
        rnd_logits = random_init(TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD))
    torch.testing.assert_close(ours_logits, ref_logits, atol=1e-4, rtol=1e-4)
    # random init gives near-constant logits (std ~1e-9); trained weights spread them over several units
    assert ours_logits.std(1).min() > 0.5 and rnd_logits.std(1).max() < 1e-3


def test_empty_torch_home_resolves_to_packaged_file(mobilenet, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    enc = E.load_image_encoder("mobilenet_v2", device="cpu")
    assert enc.fingerprint == mobilenet.fingerprint


def corrupt_copy(src, dst):
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    return dst


def test_corrupted_weights_file_gives_hash_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    bad = corrupt_copy(E.packaged_mobilenet_file(), tmp_path / "mobilenet_v2-b0353104.pth")
    monkeypatch.setattr(E, "packaged_mobilenet_file", lambda: bad)
    with pytest.raises(E.WeightsError, match=r"mobilenet_v2-b0353104\.pth: sha256 starts with [0-9a-f]{8}, "
                                             r"expected b0353104"):
        E.load_image_encoder(device="cpu")


def test_unreadable_or_mismatched_weights_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    junk = tmp_path / "mine.pth"
    junk.write_bytes(b"not a torch file")
    other = tmp_path / "other.pth"
    torch.save(torchvision.models.resnet18().state_dict(), other)
    monkeypatch.setattr(E, "packaged_mobilenet_file", lambda: junk)
    with pytest.raises(E.WeightsError, match=r"mine\.pth: cannot read"):
        E.load_image_encoder("mobilenet_v2", device="cpu")
    monkeypatch.setattr(E, "packaged_mobilenet_file", lambda: other)
    with pytest.raises(E.WeightsError, match=r"other\.pth: does not fit torchvision mobilenet_v2"):
        E.load_image_encoder("mobilenet_v2", device="cpu")


def test_unknown_names_are_clear():
    with pytest.raises(ValueError, match="unknown image encoder 'mobilenet'.*mobilenet_v2"):
        E.load_image_encoder("mobilenet")


def test_resnet_offline_error_names_url_and_place(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(E.WeightsError) as err:
        E.load_image_encoder("resnet18", device="cpu")
    msg = str(err.value)
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in msg and "TORCH_HOME" in msg


def test_resnet_from_torch_home_is_hash_checked(tmp_path, monkeypatch):
    """A file in the torchvision cache is used, and its name's hash prefix is enforced."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    ckpt = tmp_path / "torch" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), ckpt / "resnet18-f37072fd.pth")
    with pytest.raises(E.WeightsError, match="expected f37072fd"):
        E.load_image_encoder("resnet18", device="cpu")


def tiny_clip_vision(folder):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8, projection_dim=16)
    model = CLIPVisionModelWithProjection(cfg).eval()
    model.save_pretrained(folder)
    return model


def test_clip_vision_from_local_folder(tmp_path):
    from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    reference = tiny_clip_vision(tmp_path / "clip")
    enc = E.load_image_encoder(str(tmp_path / "clip"), device="cpu")
    assert enc.dim == 16 and enc.fingerprint.startswith("clip-vision:")
    x = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(3))  # resized to the model's 32 x 32
    with torch.inference_mode():
        ours = enc(x)
        pix = TF.normalize(torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear"), OPENAI_CLIP_MEAN,
                           OPENAI_CLIP_STD)
        ref = torch.nn.functional.normalize(reference(pixel_values=pix).image_embeds, dim=-1)  # CLIP: unit norm
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------- text encoder


def mean_pool_reference(folder, texts):
    """Independent sentence-transformers recipe: AutoModel tokens, mask-weighted mean, L2 norm (numpy)."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        tokens = model(**batch).last_hidden_state.numpy()
    mask = batch["attention_mask"].numpy()[..., None].astype(np.float64)
    pooled = (tokens * mask).sum(1) / mask.sum(1)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


SENTENCES = ["A smiling child plays football in the park.", "A happy kid is playing soccer on the grass.",
             "The quarterly tax report is due on Monday.", "", "Ünïcödé, commas, \"quotes\" and NA"]


def test_text_encoder_dims_norm_and_meaning(minilm):
    assert (minilm.dim, minilm.pooling) == (384, "mean")
    emb = minilm.encode(SENTENCES)
    assert emb.shape == (5, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > 0.6 and sim[0, 1] > sim[0, 2] + 0.4
    assert minilm.encode([]).shape == (0, 384)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        minilm.encode(["fine", None])


def test_text_encoder_matches_independent_mean_pooling(minilm):
    ours = minilm.encode(SENTENCES, batch_size=2)  # length-sorted batches, restored to input order
    ref = mean_pool_reference(E.packaged_minilm_dir(), SENTENCES)
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_repeated_texts_are_encoded_once(minilm):
    texts = [SENTENCES[i] for i in (2, 0, 2, 1, 0, 2, 4)]
    counter = ForwardCounter(minilm)
    try:
        got = minilm.encode(texts, batch_size=2)
    finally:
        counter.handle.remove()
    assert counter.rows == 4
    np.testing.assert_allclose(got, mean_pool_reference(E.packaged_minilm_dir(), texts), atol=2e-5)
    assert got[0].tobytes() == got[2].tobytes() == got[5].tobytes() and got[1].tobytes() == got[4].tobytes()


def test_text_encoder_matches_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(E.packaged_minilm_dir()), device="cpu")
    texts = SENTENCES + [" ".join(["word"] * 400)]  # longer than the 256 tokens MiniLM was trained with
    assert minilm.max_length == 256 == model.max_seq_length
    ref = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(minilm.encode(texts), ref, atol=2e-5)


def test_text_encoder_deterministic(minilm):
    assert np.array_equal(minilm.encode(SENTENCES), minilm.encode(SENTENCES))


def test_text_encoder_local_folder_and_clip_text(tmp_path):
    """Any local transformers folder goes through the same path: a BERT-like model is mean pooled,
    a CLIP text tower returns its normalised projected embedding."""
    from transformers import AutoTokenizer, BertConfig, BertModel, CLIPTextConfig, CLIPTextModelWithProjection

    tok = AutoTokenizer.from_pretrained(E.packaged_minilm_dir())
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=24, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=48)).eval()
    bert.save_pretrained(tmp_path / "bert")
    tok.save_pretrained(tmp_path / "bert")
    enc = E.load_text_encoder(str(tmp_path / "bert"), device="cpu")
    assert (enc.dim, enc.pooling, enc.max_length) == (24, "mean", 512)
    np.testing.assert_allclose(enc.encode(SENTENCES[:3]), mean_pool_reference(tmp_path / "bert", SENTENCES[:3]),
                               atol=2e-5)

    clip = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=40, projection_dim=12, eos_token_id=tok.sep_token_id)).eval()
    clip.save_pretrained(tmp_path / "clip")
    tok.save_pretrained(tmp_path / "clip")
    enc = E.load_text_encoder(str(tmp_path / "clip"), device="cpu")
    assert (enc.dim, enc.pooling, enc.max_length) == (12, "clip", 40)
    batch = tok(SENTENCES[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = torch.nn.functional.normalize(clip(**batch).text_embeds, dim=-1).numpy()
    np.testing.assert_allclose(enc.encode(SENTENCES[:3]), ref, atol=2e-5)


# -------------------------------------------------------------------------------------------------------- cache


def test_image_cache_hit_is_identical_and_skips_the_model(mobilenet, cache):
    arr = images(6, 32)
    counter = ForwardCounter(mobilenet)
    try:
        cold = E.image_features(mobilenet, arr, batch_size=4)
        assert counter.calls == 2
        warm = E.image_features(mobilenet, arr, batch_size=4)
        assert counter.calls == 2, "a cache hit must not run the model"
    finally:
        counter.handle.remove()
    np.testing.assert_array_equal(cold, warm)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].name.startswith("mobilenet_v2-") and files[0].suffix == ".npy"


def test_image_cache_misses_on_one_pixel_and_on_fingerprint(mobilenet, cache, monkeypatch):
    arr = images(3, 32)
    base = E.image_features(mobilenet, arr)
    changed = arr.copy()
    changed[1, 5, 7, 2] ^= 1  # one channel of one pixel, by one grey level
    counter = ForwardCounter(mobilenet)
    try:
        new = E.image_features(mobilenet, changed)
        assert counter.calls == 1
        monkeypatch.setattr(mobilenet, "fingerprint", mobilenet.fingerprint + "-other")
        E.image_features(mobilenet, arr)
        assert counter.calls == 2, "another encoder fingerprint must miss"
    finally:
        counter.handle.remove()
    assert not np.array_equal(new[1], base[1])
    np.testing.assert_allclose(new[[0, 2]], base[[0, 2]], atol=1e-5)
    assert len(list(cache.glob("*.npy"))) == 3 and not list(cache.glob("*.partial"))


def test_image_cache_from_memmap_and_chunked_hash(mobilenet, cache, tmp_path):
    arr = images(5, 32)
    np.save(tmp_path / "imgs.npy", arr)
    mm = np.load(tmp_path / "imgs.npy", mmap_mode="r", allow_pickle=False)
    # chunked digest == the reference over the same header and rows, whatever the chunk size
    assert E.RowDigests(mm, chunk_bytes=1000).whole(wait=True) == E.RowDigests(arr).whole(wait=True) == _digest_of(arr)
    first = E.image_features(mobilenet, arr)
    counter = ForwardCounter(mobilenet)
    try:
        np.testing.assert_array_equal(E.image_features(mobilenet, mm), first)
        assert counter.calls == 0, "same bytes from a memmap must hit"
    finally:
        counter.handle.remove()


def test_corrupt_cache_entry_is_recomputed(mobilenet, cache):
    arr = images(2, 32)
    good = E.image_features(mobilenet, arr)
    (entry,) = cache.glob("*.npy")
    entry.write_bytes(b"truncated")
    np.testing.assert_array_equal(E.image_features(mobilenet, arr), good)
    assert np.load(entry, allow_pickle=False).shape == (2, 1280)


def test_text_cache_hit_and_misses(minilm, cache):
    texts = ["a man laughs", "a dog runs"]
    counter = ForwardCounter(minilm)
    try:
        cold = E.text_features(minilm, texts)
        calls = counter.calls
        np.testing.assert_array_equal(E.text_features(minilm, texts), cold)
        assert counter.calls == calls, "a cache hit must not run the model"
        E.text_features(minilm, ["a man laughs", "a dog rans"])  # one character
        assert counter.calls == calls + 1
        # same characters, different split between texts: no separator can make these collide
        E.text_features(minilm, ["a", "b c"])
        E.text_features(minilm, ["a b", "c"])
        E.text_features(minilm, ["a\0b", "c"])
        assert counter.calls == calls + 4
    finally:
        counter.handle.remove()
    assert len({E.feature_cache_path(minilm, t) for t in (["ab", "c"], ["a", "bc"], ["abc"], ["abc", ""])}) == 4


def test_cache_can_be_disabled(mobilenet, cache):
    E.image_features(mobilenet, images(1, 32), cache=False)
    assert not cache.exists() or not any(cache.iterdir())


# --------------------------------------------------------------------------------------------------------- CLIP


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from tests.tiny_models import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", seed=0)


CAPTIONS = ["the dog runs", "a cat and the dog", "", "Ünïcödé text, \"quotes\" and NA"]


def clip_reference(folder, x, texts):
    """CLIP's own embeddings computed directly with transformers' CLIPModel: resize to the model's size, OpenAI
    normalisation, get_image_features / get_text_features, L2 norm. Also returns the model's logit scale."""
    from transformers import AutoTokenizer, CLIPModel
    from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    model = CLIPModel.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    size = model.config.vision_config.image_size
    pix = TF.normalize(torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear"), OPENAI_CLIP_MEAN,
                       OPENAI_CLIP_STD)
    batch = tok(texts, padding=True, truncation=True, return_tensors="pt")  # at the 24-token context length
    with torch.no_grad():
        img = model.get_image_features(pixel_values=pix).pooler_output
        txt = model.get_text_features(**batch).pooler_output
        logits = model(pixel_values=pix, **batch).logits_per_image / model.logit_scale.exp()
    norm = torch.nn.functional.normalize
    return norm(img, dim=-1).numpy(), norm(txt, dim=-1).numpy(), logits.numpy()


def test_clip_towers_of_one_model_match_transformers(tiny_clip):
    img_enc, txt_enc = E.load_encoders(str(tiny_clip), device="cpu")
    assert (img_enc.dim, txt_enc.dim, txt_enc.pooling, img_enc.input_size) == (16, 16, "clip", 32)
    arr = images(3, 48)
    img = E.image_features(img_enc, arr, cache=False)
    txt = E.text_features(txt_enc, CAPTIONS, cache=False)
    assert img.shape == (3, 16) and txt.shape == (4, 16) and img.dtype == txt.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1, atol=1e-5)
    ref_img, ref_txt, ref_logits = clip_reference(tiny_clip, E.images_to_device(arr, "cpu"), CAPTIONS)
    np.testing.assert_allclose(img, ref_img, atol=1e-5)
    np.testing.assert_allclose(txt, ref_txt, atol=1e-5)
    # deterministic, and independent of the batch size up to summation order
    np.testing.assert_array_equal(E.image_features(img_enc, arr, cache=False), img)
    np.testing.assert_allclose(E.text_features(txt_enc, CAPTIONS, batch_size=1, cache=False), txt, atol=1e-6)

    sim = E.clip_zero_shot_similarity(img, txt)
    by_hand = np.array([[float(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b)) for b in ref_txt] for a in ref_img])
    np.testing.assert_allclose(sim, by_hand, atol=1e-5)
    np.testing.assert_allclose(sim, ref_logits, atol=1e-5)  # CLIP's own logits, without the temperature
    with pytest.raises(ValueError, match="same CLIP model"):
        E.clip_zero_shot_similarity(img, np.zeros((2, 384), np.float32))


def test_clip_one_model_or_one_tower_gives_one_fingerprint_and_cache_key(tiny_clip, tmp_path, cache, monkeypatch):
    from tests.tiny_models import make_tiny_clip

    img_enc, txt_enc = E.load_encoders("clip:" + str(tiny_clip), device="cpu")
    alone_img = E.load_image_encoder("clip:" + str(tiny_clip), device="cpu")
    alone_txt = E.load_text_encoder(str(tiny_clip), device="cpu")
    assert img_enc.fingerprint == alone_img.fingerprint and img_enc.fingerprint.startswith("clip-vision:")
    assert txt_enc.fingerprint == alone_txt.fingerprint and txt_enc.fingerprint.startswith("clip:24:")
    other_img, other_txt = E.load_encoders(make_tiny_clip(tmp_path / "other", seed=1), device="cpu")
    assert other_img.fingerprint != img_enc.fingerprint and other_txt.fingerprint != txt_enc.fingerprint
    digest = E.RowDigests(images(2, 32)).whole(wait=True)
    assert E.cache_path(img_enc, digest) == E.cache_path(alone_img, digest) != E.cache_path(other_img, digest)
    cpu_path = E.cache_path(img_enc, digest)
    with monkeypatch.context() as m:  # bf16 autocast (a GPU) names another entry
        m.setattr(E.devices, "autocast_dtype", lambda dev: torch.bfloat16)
        assert E.cache_path(img_enc, digest) != cpu_path

    arr = images(2, 32)
    first = E.image_features(img_enc, arr)
    counter = ForwardCounter(alone_img)
    try:
        np.testing.assert_array_equal(E.image_features(alone_img, arr), first)
        assert counter.calls == 0, "the same tower read from one file must hit the other's cache entry"
    finally:
        counter.handle.remove()


def test_load_encoders_rejects_a_model_that_is_not_clip(tmp_path):
    with pytest.raises(E.WeightsError, match=r"'bert' model, not a full CLIP model"):
        E.load_encoders(str(E.packaged_minilm_dir()), device="cpu")
    with pytest.raises(E.WeightsError, match="no-such-folder"):
        E.load_encoders(str(tmp_path / "no-such-folder"), device="cpu")


# ------------------------------------------------------------------------------------------------- devices


class OnFakeDevice(torch.nn.Module):
    """Stands in for a model on a GPU: lives on the 'meta' device, rejects inputs that were not moved there, and
    returns 'meta' tensors that only a proper device-to-host copy can turn into numbers."""

    def __init__(self, dim=5):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1, device="meta"))
        self.dim, self.name, self.fingerprint, self.seen = dim, "fake", "fake", []

    @property
    def device(self):
        return self.p.device

    def forward(self, x=None, input_ids=None, attention_mask=None):
        x = x if x is not None else input_ids
        assert attention_mask is None or attention_mask.device.type == "meta"
        self.seen.append(x.device.type)
        assert x.device.type == "meta", f"input left on {x.device}"
        return torch.ones(len(x), self.dim, device="meta")


@pytest.fixture
def host_copies(monkeypatch):
    """Replace utils.device.to_numpy by a recorder: 'meta' tensors have no data to copy."""
    from utils import device as D

    calls = []

    def fake(t):
        calls.append(t.device.type)
        return np.zeros(tuple(t.shape), np.float32)

    monkeypatch.setattr(D, "to_numpy", fake)
    return calls


def test_feature_extraction_moves_inputs_to_the_encoder_and_results_back(host_copies):
    enc = OnFakeDevice()
    out = E.image_features(enc, images(5, 16), batch_size=2, cache=False)
    assert out.shape == (5, 5) and enc.seen == ["meta"] * 3 and host_copies == ["meta"] * 3

    class Tok:
        def __call__(self, texts, **kw):
            return {"input_ids": torch.ones(len(texts), 3, dtype=torch.long),
                    "attention_mask": torch.ones(len(texts), 3, dtype=torch.long)}

    text = E.TextEncoder(OnFakeDevice(), Tok(), name="fake", dim=5, fingerprint="f", pooling="clip", max_length=8)
    assert text.encode(["a", "b", "c"], batch_size=2).shape == (3, 5)
    assert text.model.seen == ["meta"] * 2 and host_copies[3:] == ["meta"] * 2


@pytest.mark.parametrize("arch", ["mobilenet_v2", "resnet18"])
def test_split_prefix_then_suffix_is_the_encoder(tmp_path, arch, mobilenet, monkeypatch):
    """The cut that end-to-end poisoning trains on: prefix maps + trainable suffix give the encoder's features
    exactly (BatchNorm in eval mode), and the suffix is a copy (training it leaves the encoder untouched)."""
    if arch == "mobilenet_v2":
        enc = mobilenet
    else:
        torch.manual_seed(0)
        path = tmp_path / "resnet18-random.pth"
        torch.save(torchvision.models.resnet18().state_dict(), path)
        monkeypatch.setattr(E, "_weights_file", lambda arch: path)
        enc = E.load_image_encoder("resnet18", device="cpu")
    prefix, suffix = enc.split()
    x = torch.rand(2, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        maps = prefix(x)
        # the maps before the final blocks: stride 32 in MobileNetV2, 16 in ResNet (layer4 halves them again)
        assert maps.ndim == 4 and maps.shape[-1] == {"mobilenet_v2": 5, "resnet18": 10}[arch]
        torch.testing.assert_close(suffix.eval()(maps), enc(x), rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for p in prefix.parameters())
    assert all(p.requires_grad for p in suffix.parameters())
    first = next(suffix.parameters())
    with torch.no_grad():
        first.add_(1.0)
    assert not any(p.data_ptr() == first.data_ptr() for p in enc.parameters())


def test_split_names_the_encoders_it_supports():
    enc = E.ImageEncoder(nn.Identity(), name="clip-something", dim=4, fingerprint="x", mean=[0, 0, 0], std=[1, 1, 1],
                         normalize=True)
    with pytest.raises(NotImplementedError, match="clip-something.*mobilenet_v2.*WithEncoders"):
        enc.split()


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")



def _saved_memmap(path, arr):
    np.save(path, arr)
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _digest_of(arr) -> str:
    """Independent reference for the cache's content digest: sha256 over the header and each row's sha256."""
    rows = b"".join(hashlib.sha256(row.tobytes()).digest() for row in arr)
    return hashlib.sha256(f"images\0|u1\0{arr.shape}\0".encode() + rows).hexdigest()


def test_a_memmapped_file_is_remembered_and_a_changed_file_hashed_again(mobilenet, cache, tmp_path, monkeypatch):
    monkeypatch.setattr(store, "RACY_SECONDS", 0.0)
    arr, path = images(5, 32), tmp_path / "imgs.npy"
    first = E.image_features(mobilenet, _saved_memmap(path, arr))
    (memo,) = (cache / "digests").glob("*.txt")
    assert memo.read_text().strip() == _digest_of(arr)
    counter = ForwardCounter(mobilenet)
    try:
        with monkeypatch.context() as m:  # seen before: not one byte is hashed, the features come from the cache
            m.setattr(E, "_hash_rows", lambda *a, **k: pytest.fail("a remembered file was hashed again"))
            np.testing.assert_array_equal(E.image_features(mobilenet, np.load(path, mmap_mode="r")), first)
        assert counter.calls == 0
        changed = arr.copy()
        changed[2, 3, 4, 0] ^= 1  # the same size, one grey level of one pixel: rewritten, so a new identity
        time.sleep(0.05)  # past the file system's clock tick
        new = E.image_features(mobilenet, _saved_memmap(path, changed))
        assert counter.calls == 1 and not np.array_equal(new[2], first[2])
        before = store.file_identity(np.load(path, mmap_mode="r"))
        time.sleep(0.05)
        writable = np.load(path, mmap_mode="r+")
        writable[0, 0, 0, 0] ^= 1  # changed in place through a writable map: same inode, new times
        writable.flush()
        del writable
        assert store.file_identity(np.load(path, mmap_mode="r")) not in (None, before)
    finally:
        counter.handle.remove()
    assert store.file_identity(np.load(path, mmap_mode="r+")) is None  # writable maps are never remembered
    assert store.file_identity(np.load(path, mmap_mode="r")[1:]) is None  # nor slices of a file
    assert store.file_identity(changed) is None


def test_a_file_written_moments_ago_is_hashed_not_remembered(mobilenet, cache, tmp_path):
    arr = images(3, 32)
    E.image_features(mobilenet, _saved_memmap(tmp_path / "fresh.npy", arr))
    assert not (cache / "digests").exists()
    assert E.cache_path(mobilenet, _digest_of(arr), cache).is_file()  # still cached under its content digest


def test_a_large_memmap_is_hashed_while_extracting_and_stops_on_a_hit(mobilenet, cache, tmp_path, monkeypatch):
    """Over ``HASH_FIRST_BYTES`` (0 here) the digest is computed on a helper thread during the extraction: the same
    numbers and cache entry as a plain extraction; a copy of a cached file (same bytes, not seen before) stops the
    extraction as soon as its digest is known (an encoder slowed to 0.2 s a batch; the digest takes microseconds)."""
    monkeypatch.setattr(E, "HASH_FIRST_BYTES", 0)
    monkeypatch.setattr(store, "RACY_SECONDS", 0.0)
    arr = images(24, 32)
    plain = E.image_features(mobilenet, arr, batch_size=4, cache=False)
    got = E.image_features(mobilenet, _saved_memmap(tmp_path / "a.npy", arr), batch_size=4)
    assert got.tobytes() == plain.tobytes()
    assert np.load(E.cache_path(mobilenet, _digest_of(arr), cache)).tobytes() == plain.tobytes()
    shutil.copy(tmp_path / "a.npy", tmp_path / "b.npy")
    counter = ForwardCounter(mobilenet)
    slow = mobilenet.register_forward_hook(lambda *_: time.sleep(0.2))
    try:
        again = E.image_features(mobilenet, np.load(tmp_path / "b.npy", mmap_mode="r"), batch_size=4)
    finally:
        slow.remove()
        counter.handle.remove()
    assert again.tobytes() == plain.tobytes()
    assert 1 <= counter.calls <= 2, f"{counter.calls} of 6 batches computed before the cache hit was noticed"
    assert len(list((cache / "digests").glob("*.txt"))) == 2


def test_a_read_error_while_hashing_reaches_the_caller(mobilenet, cache, monkeypatch):
    """The rows are hashed on a helper thread: its failure (a disk error under a memmap) is raised where the
    extraction waits for a digest, never swallowed into a result with rows missing."""
    def failing(images, start, stop):
        raise OSError(f"read error at row {start + 1}")
    monkeypatch.setattr(E, "_hash_rows", failing)
    with pytest.raises(OSError, match="read error at row 1"):
        E.image_features(mobilenet, images(3, 32), batch_size=2)
    assert not list(cache.glob("*.npy"))


def test_prefetch_and_release_leave_the_values_alone(tmp_path):
    arr = images(6, 16)
    mm = _saved_memmap(tmp_path / "p.npy", arr)
    for advice in ("WILLNEED", "DONTNEED"):
        E.advise_rows(mm, 1, 4, advice)
        E.advise_rows(arr, 0, 6, advice)  # in memory: a no-op
        E.advise_rows(mm, 5, 99, advice)  # clipped at the end
    np.testing.assert_array_equal(mm, arr)
    cow = np.load(tmp_path / "p.npy", mmap_mode="c")
    cow[0] = 0
    E.advise_rows(cow, 0, 6, "DONTNEED")  # a copy-on-write map keeps its private changes
    assert (cow[0] == 0).all() and np.array_equal(cow[1:], arr[1:])

@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise accounting is Linux's")
def test_hashing_a_memmap_does_not_keep_its_pages_resident(tmp_path):
    """Reading 96 MB of images through a memory map for the cache key leaves the process's RSS about where it was;
    the same pass without releasing the rows keeps them all resident (the reference)."""
    path = tmp_path / "images.npy"
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(640, 224, 224, 3))
    arr[:] = 7
    arr.flush()
    del arr
    mm = np.load(path, mmap_mode="r")
    before = _resident_bytes()
    digest = E.RowDigests(mm, chunk_bytes=8 << 20).whole(wait=True)
    released = _resident_bytes() - before
    assert digest == E.RowDigests(np.load(path), chunk_bytes=8 << 20).whole(wait=True)  # same bytes hashed
    reference = np.load(path, mmap_mode="r")
    before = _resident_bytes()
    for i in range(0, len(reference), 64):
        np.ascontiguousarray(reference[i:i + 64]).sum()
    kept = _resident_bytes() - before
    assert kept > 80e6, f"reference pass kept only {kept / 1e6:.0f} MB resident: the measurement does not work here"
    assert released < 20e6, f"{released / 1e6:.0f} MB of the memmap stayed resident after hashing"


def test_editing_the_encoders_source_misses_the_cache(mobilenet, minilm, cache, tmp_path, monkeypatch):
    """The cache key covers this module's source (``store.code_digest``): features an older version of the code
    computed are never loaded after an edit, and the unedited code finds its own entry again."""
    arr, texts = images(2, 32), ["a man laughs"]
    first, first_text = E.image_features(mobilenet, arr), E.text_features(minilm, texts)
    edited = tmp_path / "encoders.py"
    edited.write_text(open(E.__file__).read() + "\n# an edit\n")
    real = store.code_digest
    counter, text_counter = ForwardCounter(mobilenet), ForwardCounter(minilm)
    try:
        with monkeypatch.context() as m:
            m.setattr(store, "code_digest", lambda *src: real(edited) if E.__file__ in map(str, src) else real(*src))
            np.testing.assert_array_equal(E.image_features(mobilenet, arr), first)
            assert counter.calls == 1, "a cache entry written by other code was loaded"
            E.text_features(minilm, texts)
            assert text_counter.calls == 1
        E.image_features(mobilenet, arr)
        E.text_features(minilm, texts)
        assert (counter.calls, text_counter.calls) == (1, 1), "the unedited code must hit its own entries"
    finally:
        counter.handle.remove()
        text_counter.handle.remove()
    assert len(list(cache.glob("*.npy"))) == 4
