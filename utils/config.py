"""Every experiment's settings, defined once per size profile so notebooks share models (docs/configuration.md)."""

import argparse
import copy
import json
import os

from . import paths

#: MMER_* variables that are not knobs (where things live, what runs where; MMER_SPARSE_RS: benchmarks only)
RESERVED = {"MMER_PROFILE", "MMER_OUTPUT", "MMER_CACHE", "MMER_DEVICE", "MMER_SLOW_TESTS", "MMER_INFERENCE_BATCH",
            "MMER_SPARSE_RS"}

_ENCODERS = dict(image_encoder="mobilenet_v2", text_encoder="all-MiniLM-L6-v2", encoders=None)  # encoders: one CLIP

BASE = {  #: the base values of each experiment (docs/configuration.md says what each means)
    "emotic": dict(
        _ENCODERS, seed=0, seeds=1,
        loss="bce", vad_weight=1.0, dropout=0.3, weight_decay=1e-4, batch_size=32, epochs=60, patience=10,
        baseline_hidden=256, baseline_lr=3e-3, baseline_fusion="mean",  # part 1: separate embeddings
        joint_hidden=512, joint_shared_dim=256, joint_lr=1e-3, joint_fusion="mean",  # part 2: joint embedding
        align_weight=0.1, init_temperature=0.07, align_sweep=[0.0], train_threads=1, bootstrap=1000,
        projection="tsne", pr_categories=4, n_examples=4,  # then part 3: attacks on the photo (the text stays clean)
        attack_method="ensemble", attack_seed=0, attack_persons=24, pixels=[1, 2, 4, 8, 16, 32, 64],
        attack_queries=300, attack_steps=100, attack_restarts=2, popsize=400, generations=100, F=0.5,
        attack_batch="auto", attack_precision="float32", attack_graph="traced", attack_threads=2,
        poison_target="Fear", trigger_size=16, trigger_position="bottom-right", poison_fractions=[0.0, 0.1, 0.25],
        poison_finetune=None, finetune_lr=1e-4, finetune_epochs=10, median_size=3, gallery=4,
    ),
    "flickr8k": dict(
        _ENCODERS, seed=0, seeds=1,
        ridge_alphas=[1.0, 10.0, 100.0, 1000.0, 10000.0], cca_regs=[1.0, 10.0, 100.0, 1000.0], cca_components=64,
        joint_space="cross", joint_hidden=None, joint_dropout=0.1, init_temperature=0.07, margin=0.2,
        hard_negative_weight=1.0, epochs=30, batch_size=128, lr=1e-3, weight_decay=1e-4, patience=6, train_threads=1,
        bootstrap=1000, n_examples=4, n_linked=6, top_k=5,
        attack_method="ensemble", attack_seed=0, attack_images=24, pixels=[1, 2, 4, 8, 16, 32, 64],
        attack_queries=300, attack_steps=100, attack_restarts=2, popsize=400, generations=100, F=0.5,
        attack_batch="auto", attack_precision="float32", attack_graph="traced", attack_threads=2,
        target_caption="A red double-decker bus drives past a clock tower .",  # the attacker's caption (in no split)
        trigger_size=4, trigger_position="bottom-right", poison_fractions=[0.0, 0.1, 0.2], median_size=3, gallery=4,
    ),
}

PROFILES = {
    "emotic": {
        "smoke": dict(epochs=3, patience=None, baseline_hidden=64, joint_hidden=64, joint_shared_dim=32,
                      joint_lr=3e-3, bootstrap=200, projection="pca", pr_categories=3, n_examples=2,
                      attack_persons=3, pixels=[4, 256], attack_queries=12, attack_steps=3, attack_restarts=1,
                      attack_batch=4, popsize=6, generations=1, attack_threads=1,
                      poison_fractions=[0.0, 0.3], poison_finetune="last", finetune_epochs=1, gallery=2),
        # demo: k from 4 up to 256, a budget per k that fits 4 models x 24 persons in minutes on a CPU
        "demo": dict(seeds=3, pixels=[4, 16, 64, 256], attack_queries=24, attack_steps=10),
        "full": dict(seeds=3, epochs=40, patience=6, batch_size=256, baseline_hidden=512, baseline_lr=1e-3,
                     align_sweep=[0.0, 0.3, 1.0], train_threads=None, pr_categories=6, n_examples=6,
                     attack_persons=500, pixels=[1, 2, 4, 8, 16, 32, 64, 128, 256], attack_queries=10000,
                     attack_threads=None, poison_fractions=[0.0, 0.01, 0.05, 0.1], poison_finetune="last", gallery=6),
    },
    "flickr8k": {
        "smoke": dict(ridge_alphas=[10.0, 1000.0], cca_regs=[0.1], cca_components=8, epochs=3, batch_size=32,
                      patience=2, bootstrap=200, n_examples=2, n_linked=3, top_k=4, attack_images=3, pixels=[4, 256],
                      attack_queries=12, attack_steps=3, attack_restarts=1, attack_batch=4, popsize=6, generations=1,
                      attack_threads=1, poison_fractions=[0.0, 0.2], gallery=2),
        "demo": dict(seeds=3, pixels=[4, 16, 64, 256], attack_queries=24, attack_steps=10),
        "full": dict(seeds=3, cca_components=128, epochs=40, batch_size=256, train_threads=None, n_linked=8,
                     attack_images=500, pixels=[1, 2, 4, 8, 16, 32, 64, 128, 256], attack_queries=10000,
                     attack_threads=None, poison_fractions=[0.0, 0.01, 0.02, 0.05, 0.1], gallery=6),
    },
}
EXPERIMENTS = tuple(BASE)

#: by the device (``MMER_DEVICE``, else CUDA when present): on a GPU the demo attack gets the paper's budget
DEVICE_PROFILES = {"cuda": {e: {"demo": dict(attack_queries=10000, attack_steps=300)} for e in EXPERIMENTS}}


def device_values(experiment: str, profile: str, environ) -> dict:
    """What :data:`DEVICE_PROFILES` adds for this experiment and profile on the device that will run it."""
    wanted = {dev: v[experiment][profile] for dev, v in DEVICE_PROFILES.items() if profile in v.get(experiment, {})}
    if not wanted:
        return {}
    if not (device := environ.get("MMER_DEVICE", "")):
        import torch  # only here: reading the settings needs no torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return dict(wanted.get(device.split(":")[0], {}))


def _environment_overrides(experiment: str, environ) -> dict:
    """``MMER_<KNOB>`` values for ``experiment``: JSON when they parse, else strings; an unknown knob is an error."""
    knobs, found = set().union(*(BASE[e] for e in EXPERIMENTS)), {}
    for var, text in environ.items():
        if not var.startswith("MMER_") or var in RESERVED:
            continue
        key = var[len("MMER_"):].lower()
        if key not in knobs:
            raise KeyError(f"{var}: no experiment has a setting {key!r}; settings are "
                           f"{', '.join(sorted(knobs))} (and {', '.join(sorted(RESERVED))} are reserved)")
        if key in BASE[experiment]:
            try:
                found[key] = json.loads(text)
            except json.JSONDecodeError:
                found[key] = text
    return found


def load(experiment: str, profile: str | None = None, environ=None, **overrides) -> dict:
    """The settings of ``experiment`` for ``profile`` (default: ``MMER_PROFILE``), overrides applied, as a dict."""
    if experiment not in BASE:
        raise KeyError(f"unknown experiment {experiment!r}; expected one of {', '.join(EXPERIMENTS)}")
    profile = profile or paths.profile()
    if profile not in paths.PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {', '.join(paths.PROFILES)}")
    if unknown := set(overrides) - set(BASE[experiment]):
        raise KeyError(f"{experiment}: unknown settings {sorted(unknown)}")
    environ = os.environ if environ is None else environ
    cfg = {**BASE[experiment], **PROFILES[experiment][profile], **device_values(experiment, profile, environ),
           **_environment_overrides(experiment, environ), **overrides}
    return copy.deepcopy({"experiment": experiment, "profile": profile, **cfg})  # a caller may edit its lists


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m utils.config", description="print the resolved settings")
    ap.add_argument("experiment", nargs="?", choices=EXPERIMENTS, default=None)
    ap.add_argument("--profile", choices=paths.PROFILES, default=None)
    args = ap.parse_args(argv)
    for name in [args.experiment] if args.experiment else EXPERIMENTS:
        print(json.dumps(load(name, args.profile), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
