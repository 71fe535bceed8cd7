"""Code that only the two prep scripts use: reading the raw downloads and writing the artefacts.

- ``emotic``  parsing Emotic's ``Annotations.mat`` (fields by name) and the three description sources.
- ``flickr``  both Flickr8k layouts (Kaggle and original) and the split by image.
- ``io``      streaming, atomic artefact writing and robust image decoding.

The notebooks never import this subpackage; they read the artefacts through ``utils.data``.
"""
