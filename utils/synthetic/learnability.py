"""Is a written synthetic dataset learnable, and do its modalities add up? (``python -m utils.synthetic --check``)

The notebooks train small heads on frozen features, so the check does the same with the repository's default
encoders (``utils.encoders``: MobileNetV2 images, MiniLM text) and the simplest heads there are:

- Emotic: one-vs-rest logistic regression per modality (body crop, whole image, both, description, all three),
  fitted on train+val and scored on test with ``utils.metrics.emotic_metrics`` (mAP in percent). ``chance`` is the
  mAP of random scores, i.e. the mean prevalence of the categories present in test. ``fusion_gain`` is how much
  all three together beat the better of image and text.
- Flickr8k (original layout): a ridge map from image features to caption embeddings fitted on the train list,
  then image<->text Recall@5 on the test list with ``utils.metrics.retrieval_metrics``, next to the recall of a
  random ranking (``utils.metrics.retrieval_chance``).

The files are read with the prep scripts' own parsers (``utils.prep``), so the check sees what they will see.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.encoders import image_features, load_image_encoder, load_text_encoder, text_features
from utils.metrics import emotic_metrics, retrieval_chance, retrieval_metrics
from utils.prep.emotic import DescriptionFile, load_annotations, pixel_box
from utils.prep.flickr import find_source, plan_splits
from utils.prep.io import PrepError, load_rgb, resize_rgb

#: Emotic feature blocks each logistic regression sees.
MODALITIES = {"body": ("body",), "context": ("context",), "image": ("body", "context"), "text": ("text",),
              "all": ("body", "context", "text")}
BODY_SIZE, CONTEXT_SIZE = 128, 224  # the prep script's crop sizes


# ----------------------------------------------------------------------------------------------------------
# Emotic
# ----------------------------------------------------------------------------------------------------------
@dataclass
class EmoticPersons:
    """The persons a correct parser keeps, over all splits, with what each modality sees of them."""
    split: list[str] = field(default_factory=list)
    body: list[np.ndarray] = field(default_factory=list)       # (128, 128, 3) uint8 body crops
    text: list[str] = field(default_factory=list)              # descriptions from descriptions.csv
    labels: list[np.ndarray] = field(default_factory=list)     # (26,) multi-hot
    context: list[np.ndarray] = field(default_factory=list)    # (224, 224, 3) whole images, one per image file
    context_index: list[int] = field(default_factory=list)     # each person's row in ``context``


def load_emotic_persons(root) -> EmoticPersons:
    """Kept persons of ``root`` (a folder written by ``make_emotic``) with crops, images, descriptions and labels."""
    root = Path(root)
    descriptions = DescriptionFile(root / "descriptions.csv")
    out = EmoticPersons()
    for split, records in load_annotations(root / "Annotations" / "Annotations.mat").items():
        kept = 0
        for rec in records:
            path = root / "emotic" / rec.folder / rec.filename
            if not path.exists():
                continue
            img = load_rgb(path)
            height, width = img.shape[:2]
            out.context.append(resize_rgb(img, CONTEXT_SIZE))
            for person in rec.persons:
                box = pixel_box(person.bbox, width, height)
                if person.label_skip_reason() or box is None:
                    continue
                text = descriptions.lookup(split, kept, rec, person, box)
                if text is None:
                    raise PrepError(f"{descriptions.path}: no description for {split} {rec.folder}/{rec.filename} "
                                    f"box {person.bbox}")
                x1, y1, x2, y2 = box
                out.split.append(split)
                out.body.append(resize_rgb(img[y1:y2, x1:x2], BODY_SIZE))
                out.text.append(text)
                out.labels.append(person.multi_hot())
                out.context_index.append(len(out.context) - 1)
                kept += 1
    return out


def _fit_predict(train_blocks: list[np.ndarray], y_train: np.ndarray, test_blocks: list[np.ndarray],
                 c: float) -> np.ndarray:
    """One-vs-rest logistic regression on concatenated feature blocks, each standardised and scaled to unit
    total variance, so a 2,560-d image block does not drown a 384-d text block. Labels never seen score 0."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaled = [StandardScaler().fit(a) for a in train_blocks]
    a = np.hstack([sc.transform(x) / np.sqrt(x.shape[1]) for sc, x in zip(scaled, train_blocks)])
    b = np.hstack([sc.transform(x) / np.sqrt(x.shape[1]) for sc, x in zip(scaled, test_blocks)])
    scores = np.zeros((len(b), y_train.shape[1]))
    for j in range(y_train.shape[1]):
        if 0 < y_train[:, j].sum() < len(y_train):  # liblinear's dual form is fast when features outnumber rows
            clf = LogisticRegression(C=c, solver="liblinear", dual=True, max_iter=2000, random_state=0)
            scores[:, j] = clf.fit(a, y_train[:, j]).decision_function(b)
    return scores


def emotic_scores(features: dict[str, np.ndarray], labels: np.ndarray, is_test: np.ndarray,
                  c: float = 4.0) -> dict[str, np.ndarray]:
    """Test-set category scores of every modality in ``MODALITIES``, fitted on the rows where ``is_test`` is False.

    ``features`` maps "body", "context" and "text" to (N, d) arrays; ``labels`` is (N, 26) multi-hot.
    """
    fit = ~is_test
    return {name: _fit_predict([features[p][fit] for p in parts], labels[fit], [features[p][is_test] for p in parts],
                               c)
            for name, parts in MODALITIES.items()}


def emotic_report(scores: dict[str, np.ndarray], y_test: np.ndarray, n_fit: int) -> dict:
    """mAP (percent, ``utils.metrics.emotic_metrics``) of each modality's scores, chance and the fusion gain."""
    present = y_test.any(0)
    report = {"persons": {"train+val": int(n_fit), "test": len(y_test)},
              "categories_in_test": int(present.sum()),
              "chance": 100.0 * float(y_test[:, present].mean(0).mean())}
    for name, s in scores.items():
        report[name] = emotic_metrics(s, y_test)["mAP"]
    report["fusion_gain"] = report["all"] - max(report["image"], report["text"])
    return report


def emotic_learnability(root, c: float = 4.0, image_encoder=None, text_encoder=None) -> dict:
    """The Emotic half of the report for a folder written by ``make_emotic`` (encoders default to the offline ones)."""
    image_encoder = load_image_encoder() if image_encoder is None else image_encoder
    text_encoder = load_text_encoder() if text_encoder is None else text_encoder
    persons = load_emotic_persons(root)
    features = {"body": image_features(image_encoder, np.stack(persons.body), cache=False),
                "context": image_features(image_encoder, np.stack(persons.context), cache=False)[
                    persons.context_index],
                "text": text_features(text_encoder, persons.text, cache=False)}
    labels = np.stack(persons.labels)
    is_test = np.array(persons.split) == "test"
    return emotic_report(emotic_scores(features, labels, is_test, c), labels[is_test], int((~is_test).sum()))


# ----------------------------------------------------------------------------------------------------------
# Flickr8k
# ----------------------------------------------------------------------------------------------------------
def load_flickr_split(root, split: str) -> tuple[list[Path], list[str], np.ndarray]:
    """Image paths, captions and each caption's image row for one split of a Flickr8k folder (original layout).

    Splits and captions are those the prep script plans (empty captions dropped); images missing on disk are left
    out with their captions.
    """
    source = find_source(root, "original")
    items = [it for it in plan_splits(source).splits[split] if (source.image_dir / it.name).is_file()]
    captions = [(row, text) for row, it in enumerate(items) for _, text in it.captions]
    return ([source.image_dir / it.name for it in items], [t for _, t in captions],
            np.array([row for row, _ in captions], dtype=np.int64))


def flickr_similarity(train_images: np.ndarray, train_captions: np.ndarray, train_caption_image: np.ndarray,
                      test_images: np.ndarray, test_captions: np.ndarray, alpha: float = 10.0) -> np.ndarray:
    """(test images, test captions) cosine similarity after a ridge map from image features to caption embeddings.

    Every train caption is one regression target for its image's features.
    """
    from sklearn.linear_model import Ridge

    ridge = Ridge(alpha=alpha).fit(train_images[train_caption_image], train_captions)
    pred = ridge.predict(test_images)
    pred /= np.linalg.norm(pred, axis=1, keepdims=True)
    return pred @ test_captions.T


def flickr_report(sim: np.ndarray, caption_image: np.ndarray, n_train: int) -> dict:
    """Recall@5 both ways (percent, ``utils.metrics``) and what a random ranking would get."""
    recall = retrieval_metrics(sim, caption_image, ks=(5,))
    chance = retrieval_chance(caption_image, ks=(5,))
    return {"images": {"train": int(n_train), "test": int(sim.shape[0])}, "captions_test": int(sim.shape[1]),
            "i2t_R@5": recall["i2t_R@5"], "t2i_R@5": recall["t2i_R@5"],
            "chance_i2t_R@5": chance["i2t_R@5"], "chance_t2i_R@5": chance["t2i_R@5"]}


def flickr_learnability(root, alpha: float = 10.0, image_encoder=None, text_encoder=None) -> dict:
    """The Flickr8k half of the report for a folder in the original layout."""
    image_encoder = load_image_encoder() if image_encoder is None else image_encoder
    text_encoder = load_text_encoder() if text_encoder is None else text_encoder

    def features(split):
        paths, captions, caption_image = load_flickr_split(root, split)
        images = np.stack([resize_rgb(load_rgb(p), CONTEXT_SIZE) for p in paths])
        return (image_features(image_encoder, images, cache=False), text_features(text_encoder, captions, cache=False),
                caption_image)

    train_img, train_txt, train_owner = features("train")
    test_img, test_txt, test_owner = features("test")
    sim = flickr_similarity(train_img, train_txt, train_owner, test_img, test_txt, alpha)
    return flickr_report(sim, test_owner, len(train_img))


def learnability_report(out) -> dict:
    """Both checks on a folder written by ``make_all``, with the encoders loaded once."""
    out = Path(out)
    encoders = {"image_encoder": load_image_encoder(), "text_encoder": load_text_encoder()}
    return {"emotic": emotic_learnability(out / "emotic", **encoders),
            "flickr8k": flickr_learnability(out / "flickr8k_original", **encoders)}
