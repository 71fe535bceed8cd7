"""Person descriptions written by a vision-language model (``scripts/describe.py``; docs/descriptions.md).

Why: Emotic has no text, and the strongest published Emotic result gets its text this way (Xenos et al. 2024,
"VLLMs provide better context for emotion understanding"): the person's box is drawn in red on the whole image and
the model is asked, given the 26 categories, which of them suit the person in the red box. Its explanation is the
text modality. Any image-text-to-text model ``transformers`` loads (``AutoModelForImageTextToText``, hub name or
local folder) works; the prompt goes through the processor's chat template; decoding is greedy with a token limit.

Results are cached on disk per (image content, box) in a folder named by everything else that shapes them (model
and its weights, prompt, token limit, dtype, box drawing): one JSONL file per shard, appended one whole batch at a
time, so a killed run loses at most the batch it was generating.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from utils.labels import CATEGORIES
from utils.prep.emotic import weights_hash
from utils.prep.io import PrepError

#: The one place the question is written (Xenos et al. 2024's wording). ``{categories}`` becomes the 26 Emotic
#: category names, comma-separated; override with ``describe.py --prompt TEXT`` or ``--prompt-file FILE``.
PROMPT = ("Given the following list of emotions: {categories}, explain in detail which emotions are more suitable "
          "for describing how the person in the red box feels based on the image context.")
#: Default token limit: explanations run to a few sentences; the CLIP text tower reads 77 tokens, MiniLM 256.
MAX_NEW_TOKENS = 128
BOX_COLOR = (255, 0, 0)


def prompt_text(template: str = PROMPT) -> str:
    """The question asked about every person: ``template`` with ``{categories}`` filled in."""
    return template.replace("{categories}", ", ".join(CATEGORIES))


def box_width(width: int, height: int) -> int:
    """Outline thickness: 1 % of the shorter image side, at least 2 px, so it shows after the model's resizing."""
    return max(2, round(min(width, height) / 100))


def draw_box(image: Image.Image, box: Sequence[int]) -> Image.Image:
    """A copy of ``image`` with the pixel box ``(x1, y1, x2, y2)`` outlined in red, inside the box."""
    out = image.convert("RGB")  # always a copy
    x1, y1, x2, y2 = (int(v) for v in box)
    ImageDraw.Draw(out).rectangle((x1, y1, x2 - 1, y2 - 1), outline=BOX_COLOR, width=box_width(*out.size))
    return out


def person_key(digest: str, box: Sequence[int]) -> str:
    """Cache key of one person within a fingerprint: image content digest and pixel box."""
    return f"{digest}:{','.join(str(int(v)) for v in box)}"


class VLM:
    """An image-text-to-text model asked :func:`prompt_text` about one person at a time, batched.

    bf16 on CUDA, fp32 on the CPU. The model loads lazily: a fully cached run never touches it.
    """

    def __init__(self, name: str, device="cpu", prompt: str = PROMPT, max_new_tokens: int = MAX_NEW_TOKENS):
        import torch

        self.name, self.prompt, self.max_new_tokens = str(name), prompt_text(prompt), int(max_new_tokens)
        self.device = torch.device(device)
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.settings = {"model": self.name, "weights": weights_hash(self.name), "prompt": self.prompt,
                         "max_new_tokens": self.max_new_tokens, "decoding": "greedy",
                         "dtype": str(self.dtype).replace("torch.", ""),
                         "box": "red outline, max(2, round(min(w, h) / 100)) px, inside the box"}
        self.fingerprint = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:16]
        self._model = self._processor = None

    def _load(self) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        try:
            self._processor = AutoProcessor.from_pretrained(self.name)
            self._model = AutoModelForImageTextToText.from_pretrained(self.name, dtype=self.dtype)
        except Exception as e:  # OSError (not found / offline), ValueError (not an image-text-to-text model)
            raise PrepError(f"vision-language model {self.name!r}: cannot load it with AutoProcessor / "
                            f"AutoModelForImageTextToText ({type(e).__name__}: {e}). Without internet, pass a "
                            f"local folder with --model.") from e
        self._model.to(self.device).eval()
        tokenizer = getattr(self._processor, "tokenizer", None)
        if tokenizer is None:
            raise PrepError(f"vision-language model {self.name!r}: its processor has no tokenizer")
        tokenizer.padding_side = "left"  # a batch of prompts must end where generation starts

    def _text(self) -> str:
        """The prompt through the chat template (one image, then the question); the bare question when the
        processor has none (e.g. PaliGemma, whose processor places the image tokens itself)."""
        if getattr(self._processor, "chat_template", None) is None:
            return self.prompt
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
        return self._processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def describe(self, images: Sequence[Image.Image], boxes: Sequence[Sequence[int]]) -> list[str]:
        """One answer per (whole image, person box), generated together as one batch."""
        import torch

        if not images:
            return []
        if self._model is None:
            self._load()
        drawn = [[draw_box(im, box)] for im, box in zip(images, boxes)]
        inputs = self._processor(images=drawn, text=[self._text()] * len(drawn), padding=True, return_tensors="pt")
        inputs = inputs.to(self.device, dtype=self.dtype)  # casts only the floating tensors (pixels)
        tokenizer = self._processor.tokenizer
        with torch.inference_mode():
            ids = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
                                       pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                                       else tokenizer.eos_token_id)
        if not self._model.config.is_encoder_decoder:  # decoder-only models return the prompt too
            ids = ids[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in tokenizer.batch_decode(ids.detach().cpu(), skip_special_tokens=True)]


# ---------------------------------------------------------------------------------------------------------------
# The cache: JSONL files in a folder per fingerprint
# ---------------------------------------------------------------------------------------------------------------

def read_cache(folder: Path) -> dict[str, dict]:
    """Every ``key -> record`` in the folder's ``*.jsonl`` files (``{"key", "description"}``, or ``"skip"`` for an
    image that would not decode). A line cut short by a killed write (without its newline, or not valid JSON) is
    ignored: its batch is generated again."""
    out: dict[str, dict] = {}
    for path in sorted(Path(folder).glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    break
                try:
                    rec = json.loads(line)
                    out[rec["key"]] = rec
                except (ValueError, KeyError, TypeError):
                    continue
    return out


def append_cache(path: Path, records: list[dict]) -> None:
    """Append one batch's records with a single ``write`` and ``fsync`` (all the batch's lines, or a cut line
    :func:`read_cache` ignores; the next append starts on a line of its own)."""
    if not records:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        if end and os.pread(fd, 1, end - 1) != b"\n":  # a line cut by a killed write: end it, never extend it
            data = b"\n" + data
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)
