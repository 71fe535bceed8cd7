"""Synthetic Emotic and Flickr8k datasets written in the real raw formats (``.mat`` + JPEGs, both Flickr8k layouts).

They stand in for the real downloads in CI and in the demo run: the prep scripts read them exactly as they read
the real data. ``python -m utils.synthetic --size smoke|demo --out DIR`` writes them; ``--check DIR`` reports how
learnable they are with the frozen encoders.
"""
