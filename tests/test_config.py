"""utils.config: every experiment's settings per profile, environment overrides and their errors, the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from utils import config, paths

REPO = paths.REPO


@pytest.mark.parametrize("experiment", config.EXPERIMENTS)
@pytest.mark.parametrize("profile", paths.PROFILES)
def test_every_profile_resolves_to_base_then_profile_values(experiment, profile):
    cfg = config.load(experiment, profile, environ={})
    expected = {"experiment": experiment, "profile": profile, **config.BASE[experiment],
                **config.PROFILES[experiment][profile], **config.device_values(experiment, profile, {})}
    assert cfg == expected
    # a profile may only change knobs that exist: a typo there would add a setting nothing reads
    assert set(config.PROFILES[experiment][profile]) <= set(config.BASE[experiment])


def test_profiles_differ_where_they_should():
    smoke, demo, full = (config.load("emotic", p, environ={}) for p in ("smoke", "demo", "full"))
    assert (smoke["epochs"], smoke["bootstrap"], smoke["pixels"]) == (3, 200, [4, 256])
    assert demo["epochs"] == config.BASE["emotic"]["epochs"] and demo["seeds"] == 3
    assert full["seeds"] == 3 and full["attack_queries"] == 10000


@pytest.mark.parametrize("experiment", config.EXPERIMENTS)
def test_full_profile_pins_no_threads(experiment):
    """On a GPU machine with many cores, the full runs use torch's default thread count."""
    cfg = config.load(experiment, "full", environ={})
    assert cfg["train_threads"] is None and cfg["attack_threads"] is None


@pytest.mark.parametrize("experiment", config.EXPERIMENTS)
def test_demo_attack_budget_depends_on_the_device(experiment):
    """On a GPU the demo profile attacks with the paper's 10,000 queries per k; on a CPU with its own small budget;
    an explicit MMER_ setting wins over both."""
    cpu = config.load(experiment, "demo", environ={"MMER_DEVICE": "cpu"})
    gpu = config.load(experiment, "demo", environ={"MMER_DEVICE": "cuda:1"})
    assert cpu["attack_queries"] == config.PROFILES[experiment]["demo"]["attack_queries"] < 10000
    assert gpu["attack_queries"] == 10000 and gpu["attack_steps"] > cpu["attack_steps"]
    assert config.load(experiment, "demo", environ={"MMER_DEVICE": "cuda", "MMER_ATTACK_QUERIES": "7"})[
        "attack_queries"] == 7
    smoke = [config.load(experiment, "smoke", environ={"MMER_DEVICE": d}) for d in ("cuda", "cpu")]
    assert smoke[0] == smoke[1]


def test_profile_comes_from_mmer_profile_when_not_given(monkeypatch):
    monkeypatch.setenv("MMER_PROFILE", "full")
    assert config.load("flickr8k", environ={})["profile"] == "full"
    monkeypatch.setenv("MMER_PROFILE", "nonsense")
    with pytest.raises(ValueError, match="nonsense"):
        config.load("flickr8k", environ={})


@pytest.mark.parametrize("text, value", [
    ("5", 5), ("0.3", 0.3), ("[1, 4, 16]", [1, 4, 16]), ("null", None), ("true", True),
    ("resnet18", "resnet18"),                     # not JSON: kept as the string
    ('"42"', "42"),                               # a JSON string stays a string
])
def test_environment_value_is_json_when_it_parses_else_a_string(text, value):
    cfg = config.load("emotic", "smoke", environ={"MMER_IMAGE_ENCODER": text})
    assert cfg["image_encoder"] == value and type(cfg["image_encoder"]) is type(value)


def test_environment_overrides_several_knobs():
    env = {"MMER_EPOCHS": "5", "MMER_PIXELS": "[1,4,16]", "MMER_IMAGE_ENCODER": "resnet18"}
    cfg = config.load("emotic", "demo", environ=env)
    assert (cfg["epochs"], cfg["pixels"], cfg["image_encoder"]) == (5, [1, 4, 16], "resnet18")


def test_knob_of_the_other_experiment_applies_only_there():
    env = {"MMER_RIDGE_ALPHAS": "[2.0]", "MMER_BASELINE_HIDDEN": "7"}
    emotic, flickr = config.load("emotic", "smoke", environ=env), config.load("flickr8k", "smoke", environ=env)
    assert "ridge_alphas" not in emotic and emotic["baseline_hidden"] == 7
    assert flickr["ridge_alphas"] == [2.0] and "baseline_hidden" not in flickr


@pytest.mark.parametrize("var", ["MMER_EPOCS", "MMER_", "MMER_PROFILES"])
def test_unknown_mmer_variable_is_an_error_naming_it(var):
    with pytest.raises(KeyError, match=var):
        config.load("emotic", "smoke", environ={var: "3"})


def test_reserved_and_foreign_variables_are_not_knobs():
    env = {name: "x" for name in config.RESERVED} | {"OMP_NUM_THREADS": "1", "EMOTIC_ROOT": "/nowhere"}
    assert config.load("emotic", "smoke", environ=env) == config.load("emotic", "smoke", environ={})


def test_default_environment_is_the_process_environment(monkeypatch):
    monkeypatch.setenv("MMER_EPOCHS", "4")
    assert config.load("emotic", "smoke")["epochs"] == 4
    monkeypatch.setenv("MMER_EPOCS", "4")
    with pytest.raises(KeyError, match="MMER_EPOCS"):
        config.load("emotic", "smoke")


def test_keyword_overrides_win_over_environment_and_profile():
    cfg = config.load("emotic", "smoke", environ={"MMER_EPOCHS": "5"}, epochs=7, seed=3)
    assert (cfg["epochs"], cfg["seed"]) == (7, 3)


def test_unknown_keyword_experiment_or_profile_is_an_error():
    with pytest.raises(KeyError, match="ridge_alphas"):
        config.load("emotic", "smoke", environ={}, ridge_alphas=[1.0])
    with pytest.raises(KeyError, match="cifar"):
        config.load("cifar", "smoke", environ={})
    with pytest.raises(ValueError, match="huge"):
        config.load("emotic", "huge", environ={})


def test_a_loaded_config_is_independent_of_the_defaults():
    """A notebook that edits its settings (e.g. appends a pixel budget) must not change the next load."""
    before = json.loads(json.dumps(config.load("emotic", "smoke", environ={})))
    cfg = config.load("emotic", "smoke", environ={})
    cfg["pixels"].append(99)
    cfg["poison_fractions"].clear()
    again = config.load("emotic", "smoke", environ={})
    assert again == before and 99 not in again["pixels"] and again["poison_fractions"]


def _cli(*args, **env):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MMER_")} | env
    return subprocess.run([sys.executable, "-m", "utils.config", *args], cwd=REPO, env=environ,
                          capture_output=True, text=True)


def _json_documents(text: str) -> list:
    decoder, docs, pos = json.JSONDecoder(), [], 0
    while pos < len(text.rstrip()):
        doc, pos = decoder.raw_decode(text, pos)
        docs.append(doc)
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return docs


def _cli_in(monkeypatch, capsys, *args, **env) -> tuple[int, str]:
    """``python -m utils.config`` in-process (``_cli`` runs it as a command): exit status and printout."""
    for var in [k for k in os.environ if k.startswith("MMER_")]:
        monkeypatch.delenv(var)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    capsys.readouterr()
    return config.main(list(args)), capsys.readouterr().out


def test_cli_prints_both_experiments_for_the_environment_profile(monkeypatch, capsys):
    code, out = _cli_in(monkeypatch, capsys, MMER_PROFILE="smoke", MMER_EPOCHS="2")
    assert code == 0
    docs = _json_documents(out)
    assert [d["experiment"] for d in docs] == list(config.EXPERIMENTS)
    for doc in docs:
        assert doc == json.loads(json.dumps(config.load(doc["experiment"], "smoke", environ={"MMER_EPOCHS": "2"})))


def test_cli_prints_one_experiment_for_a_given_profile(monkeypatch, capsys):
    code, out = _cli_in(monkeypatch, capsys, "flickr8k", "--profile", "full")
    assert code == 0
    (doc,) = _json_documents(out)
    assert doc["experiment"] == "flickr8k" and doc["profile"] == "full" and doc["train_threads"] is None


def test_cli_fails_naming_an_unknown_variable():
    result = _cli(MMER_EPOCS="2")
    assert result.returncode != 0 and "MMER_EPOCS" in result.stderr


def test_every_setting_is_documented():
    """docs/configuration.md names every knob of both experiments (a new knob without a line there fails)."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    missing = sorted(k for e in config.EXPERIMENTS for k in config.BASE[e] if f"`{k}`" not in doc)
    assert not missing, f"settings missing from docs/configuration.md: {missing}"
