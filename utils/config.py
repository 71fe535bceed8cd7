"""Every experiment's settings, defined once, for each size profile; any of them can be overridden without editing
a notebook.

There are two experiments, one per dataset: ``emotic`` (notebooks 01, 03, 05) and ``flickr8k`` (02, 04, 06). The
robustness notebooks read the same settings as the notebooks whose models they attack, so a model is trained by
one recipe with one set of values, and a checkpoint saved by notebook 01 is the very model notebook 05 attacks.

Profiles: ``smoke`` (CI: tiny synthetic data, seconds), ``demo`` (the default run on the bundled synthetic data,
minutes on a laptop CPU), ``full`` (the real datasets, paper budgets; sized for a GPU).

Overrides, strongest last:
1. the profile's values below;
   on a GPU, a profile's device-dependent values (``DEVICE_PROFILES``: the demo attack budget);
2. environment variables ``MMER_<KNOB>`` (upper case), e.g. ``MMER_EPOCHS=5``, ``MMER_IMAGE_ENCODER=resnet18``,
   ``MMER_PIXELS=[1,4,16]``; values are read as JSON when they parse as JSON, else as plain strings. A variable
   ``MMER_<NAME>`` that is no knob of either experiment (and not one of ``RESERVED``) is an error, so a typo never
   goes unnoticed;
3. keyword arguments of :func:`load` (what a test or a script passes).

``python -m utils.config [emotic|flickr8k] [--profile P]`` prints the resolved settings.
"""
from __future__ import annotations

import copy
import json
import os
import sys

from . import paths

#: MMER_* variables that are not knobs: where things live and what runs where (see ``utils.paths``)
RESERVED = {"MMER_PROFILE", "MMER_OUTPUT", "MMER_CACHE", "MMER_DEVICE", "MMER_SLOW_TESTS",
            "MMER_INFERENCE_BATCH",  # utils.batching: "auto" or the images per model call
            "MMER_SPARSE_RS"}  # benchmarks/bench_attack.py: a checkout of fra31/sparse-rs

# ``encoders``: one CLIP hub name or local folder for both sides (its image and text towers); when set it replaces
# ``image_encoder`` and ``text_encoder``, and the Flickr8k notebooks add a "CLIP zero-shot" row.
_ENCODERS = dict(image_encoder="mobilenet_v2", text_encoder="all-MiniLM-L6-v2", encoders=None)

#: the base values of each experiment; each profile below changes only what it must
BASE = {
    "emotic": dict(
        _ENCODERS, seed=0,
        seeds=1,                  # training seeds of the headline models (mean and sd reported beside intervals)
        loss="bce", vad_weight=1.0, dropout=0.3, weight_decay=1e-4, batch_size=32, epochs=60, patience=10,
        baseline_hidden=256, baseline_lr=3e-3, baseline_fusion="mean",      # part 1: separate embeddings
        joint_hidden=512, joint_shared_dim=256, joint_lr=1e-3, joint_fusion="mean",  # part 2: joint embedding
        align_weight=0.1,         # lambda: weight of the contrastive alignment loss in the joint model
        init_temperature=0.07,    # CLIP's starting temperature; learned from there
        align_sweep=[0.0],        # extra lambda values trained for the alignment ablation
        train_threads=1,          # the heads are tiny: one thread beats several on a CPU; None = torch's default
        bootstrap=1000,           # resamples for every interval
        projection="tsne", pr_categories=4, n_examples=4,
        # part 3: attacks on the photo (the text stays clean). attack_method: "ensemble" (white-box sparse-PGD,
        # attack_steps per k, then the sparse search, attack_queries per k; per item the worst case), "sparse"
        # (random search over k pixels), "sparse-pgd" or "de" (Su et al.'s differential evolution)
        attack_method="ensemble", attack_seed=0,  # attack_seed: the searches' randomness only (not rows or models)
        attack_persons=24, pixels=[1, 2, 4, 8, 16, 32, 64], attack_queries=300, attack_steps=100,
        attack_restarts=2,  # white-box: restarts alternating sparse-PGD's two variants, attack_steps steps each
        popsize=400, generations=100, F=0.5,  # DE: the paper's settings
        attack_batch=128, attack_precision="float32", attack_threads=2,
        poison_target="Fear", trigger_size=16, trigger_position="bottom-right", poison_fractions=[0.0, 0.1, 0.25],
        # end-to-end poisoning: "last" also retrains the image encoder's final blocks on the poisoned photos (off by
        # default: on a CPU it costs minutes even at the demo size; on in smoke and full), at its own learning rate
        poison_finetune=None, finetune_lr=1e-4, finetune_epochs=10,
        median_size=3, gallery=4,
    ),
    "flickr8k": dict(
        _ENCODERS, seed=0, seeds=1,
        ridge_alphas=[1.0, 10.0, 100.0, 1000.0, 10000.0], cca_regs=[1.0, 10.0, 100.0, 1000.0], cca_components=64,
        joint_space="cross", joint_hidden=None, joint_dropout=0.1, init_temperature=0.07, margin=0.2,
        hard_negative_weight=1.0,
        epochs=30, batch_size=128, lr=1e-3, weight_decay=1e-4, patience=6, train_threads=1,
        bootstrap=1000, n_examples=4, n_linked=6, top_k=5,
        attack_method="ensemble", attack_seed=0, attack_images=24, pixels=[1, 2, 4, 8, 16, 32, 64],
        attack_queries=300, attack_steps=100, attack_restarts=2, popsize=400, generations=100, F=0.5, attack_batch=128,
        attack_precision="float32", attack_threads=2,
        target_caption="A red double-decker bus drives past a clock tower .",  # the attacker's caption (in no split)
        trigger_size=4, trigger_position="bottom-right", poison_fractions=[0.0, 0.1, 0.2],
        median_size=3, gallery=4,
    ),
}

PROFILES = {
    "emotic": {
        "smoke": dict(epochs=3, patience=None, baseline_hidden=64, joint_hidden=64, joint_shared_dim=32,
                      joint_lr=3e-3, bootstrap=200, projection="pca", pr_categories=3, n_examples=2,
                      attack_persons=3, pixels=[4, 256], attack_queries=12, attack_steps=3, attack_restarts=1,
                      popsize=6, generations=1, attack_threads=1,
                      poison_fractions=[0.0, 0.3], poison_finetune="last", finetune_epochs=1, gallery=2),
        # demo: k from 4 up to 256, a budget per k sized so that 4 models x 24 persons fit in minutes on a CPU (on
        # a GPU, DEVICE_PROFILES gives it the paper's budget)
        "demo": dict(seeds=3, pixels=[4, 16, 64, 256], attack_queries=24, attack_steps=10),
        "full": dict(seeds=3, epochs=40, patience=6, batch_size=256, baseline_hidden=512, baseline_lr=1e-3,
                     align_sweep=[0.0, 0.3, 1.0], train_threads=None, pr_categories=6, n_examples=6,
                     attack_persons=500, pixels=[1, 2, 4, 8, 16, 32, 64, 128, 256], attack_queries=10000,
                     attack_batch=512, attack_threads=None, poison_fractions=[0.0, 0.01, 0.05, 0.1],
                     poison_finetune="last", gallery=6),
    },
    "flickr8k": {
        "smoke": dict(ridge_alphas=[10.0, 1000.0], cca_regs=[0.1], cca_components=8, epochs=3, batch_size=32,
                      patience=2, bootstrap=200, n_examples=2, n_linked=3, top_k=4,
                      attack_images=3, pixels=[4, 256], attack_queries=12, attack_steps=3, attack_restarts=1,
                      popsize=6, generations=1, attack_threads=1,
                      poison_fractions=[0.0, 0.2], gallery=2),
        "demo": dict(seeds=3, pixels=[4, 16, 64, 256], attack_queries=24, attack_steps=10),
        "full": dict(seeds=3, cca_components=128, epochs=40, batch_size=256, train_threads=None, n_linked=8,
                     attack_images=500, pixels=[1, 2, 4, 8, 16, 32, 64, 128, 256], attack_queries=10000,
                     attack_batch=512, attack_threads=None, poison_fractions=[0.0, 0.01, 0.02, 0.05, 0.1], gallery=6),
    },
}
EXPERIMENTS = tuple(BASE)

#: profile values that depend on the device (``MMER_DEVICE``, else CUDA when present), applied over the profile's:
#: on a GPU the demo attack gets the paper's budget (10,000 queries per k), which settles; on a CPU the profile's
#: budget is sized to minutes, and the findings say when it does not settle
DEVICE_PROFILES = {
    "cuda": {experiment: {"demo": dict(attack_queries=10000, attack_steps=300)} for experiment in EXPERIMENTS},
}


def device_values(experiment: str, profile: str, environ) -> dict:
    """The values :data:`DEVICE_PROFILES` adds for this experiment and profile on the device that will run it."""
    wanted = {dev: values[experiment][profile] for dev, values in DEVICE_PROFILES.items()
              if profile in values.get(experiment, {})}
    if not wanted:
        return {}
    device = environ.get("MMER_DEVICE", "")
    if not device:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return dict(wanted.get(device.split(":")[0], {}))


def _parse(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _environment_overrides(experiment: str, environ) -> dict:
    knobs = set().union(*(BASE[e] for e in EXPERIMENTS))
    found = {}
    for var, text in environ.items():
        if not var.startswith("MMER_") or var in RESERVED:
            continue
        key = var[len("MMER_"):].lower()
        if key not in knobs:
            raise KeyError(f"{var}: no experiment has a setting {key!r}; settings are "
                           f"{', '.join(sorted(knobs))} (and {', '.join(sorted(RESERVED))} are reserved)")
        if key in BASE[experiment]:
            found[key] = _parse(text)
    return found


def load(experiment: str, profile: str | None = None, environ=None, **overrides) -> dict:
    """The settings of ``experiment`` for ``profile`` (default: ``MMER_PROFILE``), with the overrides applied.

    The result is a plain dict (it is saved beside every result) with ``experiment`` and ``profile`` added.
    """
    if experiment not in BASE:
        raise KeyError(f"unknown experiment {experiment!r}; expected one of {', '.join(EXPERIMENTS)}")
    profile = profile or paths.profile()
    if profile not in paths.PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {', '.join(paths.PROFILES)}")
    unknown = set(overrides) - set(BASE[experiment])
    if unknown:
        raise KeyError(f"{experiment}: unknown settings {sorted(unknown)}")
    environ = os.environ if environ is None else environ
    cfg = {**BASE[experiment], **PROFILES[experiment][profile], **device_values(experiment, profile, environ),
           **_environment_overrides(experiment, environ), **overrides}
    # a deep copy: a caller that edits a list (e.g. appends a pixel budget) must not change the defaults
    return copy.deepcopy({"experiment": experiment, "profile": profile, **cfg})


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m utils.config", description="print the resolved settings")
    ap.add_argument("experiment", nargs="?", choices=EXPERIMENTS, default=None)
    ap.add_argument("--profile", choices=paths.PROFILES, default=None)
    args = ap.parse_args(argv)
    for name in [args.experiment] if args.experiment else EXPERIMENTS:
        print(json.dumps(load(name, args.profile), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
