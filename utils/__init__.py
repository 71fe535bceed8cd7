"""Shared code for the multi-modal emotion recognition notebooks.

One module per concern, so a file name says where a thing lives:

- ``labels``    Emotic's 26 categories and 3 continuous dimensions, in canonical order.
- ``prep_io``   streaming, atomic artefact writing and robust image decoding for the prep scripts.
- ``emotic``    parsing Emotic's ``Annotations.mat`` and building the person descriptions.
- ``flickr``    parsing both Flickr8k layouts and splitting by image.
- ``fixtures``  synthetic Emotic and Flickr8k datasets written in the real raw formats.
- ``paths``     size profile (smoke / demo / full) and where artefacts and outputs live.
- ``data``      loading the prepared artefacts; torch Datasets over them.
- ``encoders``  image and text encoders by name, batched feature extraction, on-disk feature cache.
- ``models``    baseline (separate embeddings) and joint-embedding models for both datasets.
- ``training``  the one training loop every notebook uses.
- ``metrics``   mAP, VAD error, dominant-emotion accuracy, retrieval recall and ranks.
- ``attacks``   the batched few-pixel differential-evolution attack.
- ``poisoning`` pixel-trigger data poisoning and the median-filter defence.
- ``plots``     the figures the notebooks show.
"""

__version__ = "0.1.0"
