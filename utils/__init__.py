"""Shared code for the multi-modal emotion recognition notebooks.

One module per concern, so a file name says where a thing lives:

- ``labels``    Emotic's 26 categories and 3 continuous dimensions, in canonical order.
- ``paths``     size profile (smoke / demo / full) and where artefacts and outputs live.
- ``data``      loading the prepared artefacts; torch Datasets over them.
- ``encoders``  image and text encoders by name, batched feature extraction, on-disk feature cache.
- ``models``    baseline (separate embeddings) and joint-embedding models for both datasets.
- ``training``  the one training loop every notebook uses.
- ``metrics``   mAP, VAD error, dominant-emotion accuracy, retrieval recall and ranks.
- ``attacks``   the batched few-pixel differential-evolution attack.
- ``poisoning`` pixel-trigger data poisoning and the median-filter defence.
- ``plots``     the figures the notebooks show.

Two subpackages hold what the notebooks never import: ``prep`` (the prep scripts' parsing and streaming I/O) and
``synthetic`` (the generator of the bundled synthetic datasets).
"""

__version__ = "0.1.0"
