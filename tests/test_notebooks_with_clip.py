"""Notebooks 01-04 on smoke with another documented encoder: the two towers of one CLIP model for both sides.

The CLIP model is tiny, randomly initialised and saved locally by ``tests.tiny_models.make_tiny_clip`` (built with
the transformers classes, no download), so this exercises the real CLIP code path: feature sizes other than the
defaults, CLIP preprocessing, one model behind both encoders, and the Flickr8k "CLIP zero-shot" row, which must equal
the towers' own cosine similarity.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import KERNEL_ENV, REPO, NotebookRunner, prepare_data

pytestmark = pytest.mark.notebook

NOTEBOOKS = ["01_emotic_baseline", "02_flickr8k_baseline", "03_emotic_joint_embedding", "04_flickr8k_joint_embedding"]


@pytest.fixture(scope="module")
def clip_runner(tmp_path_factory, request):
    prepare_data()
    from tests.tiny_models import make_tiny_clip

    folder = make_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "clip")
    output = REPO / "outputs" / f"test-{KERNEL_ENV['MMER_PROFILE']}-clip"
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    env = {**KERNEL_ENV, "MMER_ENCODERS": str(folder), "MMER_OUTPUT": str(output)}
    return NotebookRunner(output, request.config.getoption("--notebook-cell-timeout"), env=env), folder


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_with_clip_encoders(name, clip_runner):
    runner, folder = clip_runner
    out = runner.run(name)
    doc = json.loads((out / "metrics" / f"{name}.json").read_text())
    assert doc["config"]["encoders"] == str(folder)
    assert doc["encoders"]["image"] != doc["encoders"]["text"], "two towers, two fingerprints"
    with np.load(out / "predictions" / doc["predictions"], allow_pickle=False) as p:
        labels = [str(x) for x in p["model_labels"]]
        assert set(labels) == set(doc["summary"]) - {"chance"}
        if name.startswith(("02", "04")):
            assert "CLIP zero-shot" in labels, "with CLIP encoders the Flickr8k notebooks add the zero-shot row"


def test_clip_zero_shot_row_is_the_towers_cosine(clip_runner):
    """The saved zero-shot similarity equals the cosine of the towers' features, computed here from the artefacts."""
    from utils import data, encoders

    runner, folder = clip_runner
    out = runner.run("02_flickr8k_baseline")
    image_encoder, text_encoder = encoders.load_encoders(str(folder))
    test = data.load_flickr("test")
    img = encoders.image_features(image_encoder, test.images, cache=False).astype(np.float64)
    txt = encoders.text_features(text_encoder, test.caption_texts, cache=False).astype(np.float64)
    cosine = (img / np.linalg.norm(img, axis=1, keepdims=True)) @ (txt / np.linalg.norm(txt, axis=1, keepdims=True)).T
    with np.load(out / "predictions" / "02_flickr8k_baseline.npz", allow_pickle=False) as p:
        assert np.allclose(p["clip_zero_shot_similarity"], cosine, atol=1e-5)
