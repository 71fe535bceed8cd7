"""Shared code for the multi-modal emotion recognition notebooks.

One module per concern, so a file name says where a thing lives. What the notebooks import:

- ``config``       every experiment's settings per size profile (smoke / demo / full), overridable by MMER_<NAME>.
- ``emotic``, ``flickr8k``  one module per dataset: data, models and recipes, tables, findings, attacks, poisoning.
- ``experiments``  what both share: frozen features, train-or-load, tables with intervals, findings, saving.
- ``robustness``   part 3, shared: attacked items, pixels needed, paired attack tests, defence, verdicts.
- ``plots``        the figures the notebooks show.

What those are built on:

- ``labels``       Emotic's 26 categories and 3 continuous dimensions, in canonical order.
- ``paths``        the active profile and where artefacts, outputs and the feature cache live.
- ``data``         loading the prepared artefacts; torch Datasets over them.
- ``device``       which device runs the code, autocast, moving tensors and back to numpy.
- ``encoders``     image and text encoders by name (CLIP towers too), batched features, on-disk feature cache.
- ``tiny_models``  a tiny randomly initialised CLIP, saved locally, that stands in for a hub model in tests.
- ``models``       baseline (separate embeddings) and joint-embedding models for both datasets.
- ``training``     the one training loop every model uses; prediction; single-image inference.
- ``metrics``      mAP, VAD error, dominant-emotion accuracy, retrieval recall and ranks.
- ``stats``        bootstrap and Wilson intervals, paired bootstrap / permutation / McNemar tests, their wording.
- ``results``      saving metrics (the one JSON writer) and predictions (``.npz``), atomically.
- ``attack``       the few-pixel attacks: pipelines, differential evolution, sparse search, results, pixels needed.
- ``poisoning``    pixel-trigger data poisoning and the median-filter defence.

Two subpackages hold what the notebooks never import: ``prep`` (the prep scripts' parsing and streaming I/O) and
``synthetic`` (the generator of the bundled synthetic datasets in the real raw formats).
"""

__version__ = "0.2.0"
