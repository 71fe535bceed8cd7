"""The Flickr8k experiments (notebooks 02, 04, 06); shared parts: ``utils.experiments``, ``utils.robustness``."""
import numpy as np
import pandas as pd

from . import attack as A
from . import data as D
from . import encoders, paths, plots, stats
from . import experiments as X
from . import robustness as R
from .metrics import retrieval_chance, retrieval_metrics, retrieval_ranks
from .models import FlickrBaseline, FlickrJoint
from .poisoning import median_filter_defence, poison_images, stamp_trigger
from .training import flickr_eval, flickr_pairs, seed_everything

#: joint models: row label -> FlickrJoint arguments beyond the settings
JOINT_MODELS = {"joint (both towers)": dict(towers=("image", "text")), "image tower only": dict(towers=("image",)),
                "text tower only": dict(towers=("text",)),  # hard negatives: the weight from the settings
                "joint + hard negatives": dict(towers=("image", "text"), hard_negative_weight=None)}
_RECIPE = ("joint_space", "joint_hidden", "joint_dropout", "init_temperature", "margin", "epochs", "batch_size", "lr",
           "weight_decay", "patience", "train_threads")
COLUMNS = ("i2t R@1", "i2t R@5", "i2t R@10", "t2i R@1", "t2i R@5", "t2i R@10", "mean R@1", "i2t median rank",
           "t2i median rank")


class Data(X.Data):
    def sizes(self) -> pd.DataFrame:
        return pd.DataFrame({s: {"images": len(d), "captions": len(d.captions)} for s, d in self.splits.items()}).T


def load_splits() -> tuple:
    return paths.artefact_dir("flickr8k"), {s: D.load_flickr(s) for s in X.SPLITS}


def data(cfg: dict) -> Data:
    """One image row per image, one text row per caption."""
    def featurise(s, d, image_encoder, text_encoder):
        return {"image": encoders.image_features(image_encoder, d.images, desc=f"{s} images"),
                "text": encoders.text_features(text_encoder, d.caption_texts, desc=f"{s} captions"),
                "caption_image": np.asarray(d.caption_image, np.int64)}
    return X.with_features(Data, "flickr8k", cfg, *load_splits(), featurise)


def train(data: Data, cfg: dict, label: str, *, seed: int | None = None, train: dict | None = None,
          tag: str = "clean", progress: bool = True) -> X.Trained:
    """Train (or load) the two-tower model ``label``; best epoch by validation mean R@1."""
    kwargs = {k: cfg[k] if k == "hard_negative_weight" else v for k, v in JOINT_MODELS[label].items()}
    train = data.features["train"] if train is None else train
    seed = cfg["seed"] if seed is None else seed
    seed_everything(seed)  # the initial weights depend on the seed only, not on what ran before
    net = FlickrJoint(dims=data.dims, space=cfg["joint_space"], hidden=cfg["joint_hidden"], margin=cfg["margin"],
                      dropout=cfg["joint_dropout"], init_temperature=cfg["init_temperature"], **kwargs)
    key = {**X.train_key(data, "flickr8k", label, seed, tag, train), "model": {k: str(v) for k, v in kwargs.items()},
           **{k: cfg[k] for k in _RECIPE}}
    pairs = flickr_pairs(train["image"], train["text"], train["caption_image"])
    with X.threads(cfg["train_threads"]):
        fit_kwargs = dict(metric_fn=flickr_eval, monitor="mean_R@1", epochs=cfg["epochs"], patience=cfg["patience"],
                          lr=cfg["lr"], weight_decay=cfg["weight_decay"], batch_size=cfg["batch_size"])
        return X.train_or_load(net, label, key, pairs, data.features["val"], fit_kwargs, progress)


def baselines(data: Data, cfg: dict, train: dict | None = None) -> tuple[dict, dict]:
    """The closed-form baselines (ridge maps, CCA), penalties chosen on validation mean R@1: (models, val grid)."""
    train = data.features["train"] if train is None else train
    val, models, grid = data.features["val"], {}, {}
    with X.threads(cfg["train_threads"]):
        for label, method in (("image->text map", "image_to_text"), ("text->image map", "text_to_image")):
            models[label], grid[label] = FlickrBaseline.select(train, val, method, grid=cfg["ridge_alphas"])
        models["both maps"] = FlickrBaseline("both", alpha=models["image->text map"].alpha,
                                             alpha_t2i=models["text->image map"].alpha).fit(
            train["image"], train["text"], train["caption_image"])
        models["CCA"], grid["CCA"] = FlickrBaseline.select(train, val, "cca", grid=cfg["cca_regs"],
                                                           n_components=cfg["cca_components"])
    return models, grid


def chosen_penalties(models: dict) -> dict:
    """The penalty each closed-form baseline ended with (ridge alpha per direction, CCA shrinkage)."""
    return {label: ([m.alpha, m.alpha_t2i] if m.method == "both" else m.reg if m.method == "cca" else m.alpha)
            for label, m in models.items()}


def similarities(models: dict, data: Data) -> dict:
    """label -> (images x captions) test similarity, for any model with a ``similarity`` method."""
    f = data.features["test"]
    return {label: np.asarray(m.similarity(f["image"], f["text"]), np.float64) for label, m in models.items()}


def clip_zero_shot(data: Data) -> dict:
    """``{"CLIP zero-shot": similarity}`` when the encoders are one CLIP model's towers, else ``{}``."""
    if getattr(data.text_encoder, "pooling", None) != "clip" or data.image_encoder.name != data.text_encoder.name:
        return {}
    f = data.features["test"]
    return {"CLIP zero-shot": np.asarray(encoders.clip_zero_shot_similarity(f["image"], f["text"]), np.float64)}


def table(sims: dict, data: Data, cfg: dict) -> pd.DataFrame:
    """Recall@1/5/10 both ways, mean R@1 and median ranks with 95 % bootstrap intervals over images, plus chance."""
    owner, rows = data.features["test"]["caption_image"], {}
    for label, sim in sims.items():
        ci = stats.retrieval_intervals(sim, owner, n_resamples=cfg["bootstrap"], seed=cfg["seed"])
        rows[label] = X.interval_columns({column: ci[column.replace(" ", "_")] for column in COLUMNS})
    ch = retrieval_chance(owner)
    rows["chance"] = {c: ch.get(c.replace(" ", "_"), np.nan) for c in COLUMNS}
    out = pd.DataFrame(rows).T
    out.attrs["test_items"] = len(np.unique(owner))
    return out


def compare(sims: dict, data: Data, cfg: dict, pairs: list, metric: str = "mean R@1") -> pd.DataFrame:
    owner = data.features["test"]["caption_image"]
    return X.compare(pairs, metric, lambda a, b: stats.compare_retrieval(
        sims[a], sims[b], owner, metric=metric, n_resamples=cfg["bootstrap"], seed=cfg["seed"]))


def seed_table(data: Data, cfg: dict, labels: list[str], metric: str = "mean R@1") -> pd.DataFrame:
    test = data.features["test"]
    return X.seed_table(cfg, labels, metric, lambda label, seed: retrieval_metrics(train(
        data, cfg, label, seed=seed, progress=False).model.similarity(test["image"], test["text"]),
        test["caption_image"])[metric.replace(" ", "_")])


def figures(name: str, data: Data, sims: dict, table: pd.DataFrame, model, cfg: dict, main: str, title: str) -> None:
    """The retrieval figures of notebooks 02 and 04: seeded examples both ways, projection, ranks, comparison."""
    split, test, rng = data.splits["test"], data.features["test"], np.random.default_rng(cfg["seed"])
    images = sorted(rng.choice(len(split), min(cfg["n_examples"], len(split)), replace=False).tolist())
    captions = sorted(rng.choice(len(split.captions), cfg["n_examples"], replace=False).tolist())
    linked = rng.choice(len(split), min(cfg["n_linked"], len(split)), replace=False)
    plots.retrieval_examples(split.images, split.caption_texts, sims[main], test["caption_image"], images,
                             k=cfg["top_k"], title=f"image -> text, {main}", path=X.figure(name, "i2t_examples"))
    plots.text_to_image_examples(split.images, split.caption_texts, sims[main], test["caption_image"], captions,
                                 k=min(cfg["top_k"], len(split)), title=f"text -> image, {main}",
                                 path=X.figure(name, "t2i_examples"))
    plots.paired_projection(*model.embed(test["image"], test["text"]), test["caption_image"], linked=linked,
                            title=f"{main}: images and captions (PCA, each modality centred)",
                            path=X.figure(name, "projection"))
    ranks = {label: retrieval_ranks(s, test["caption_image"]) for label, s in sims.items()}
    plots.rank_histogram({k: r[0] for k, r in ranks.items()}, {k: r[1] for k, r in ranks.items()},
                         title="rank of the first right answer (test)", path=X.figure(name, "ranks"))
    plots.comparison_bars(table.drop(index="chance"), "mean R@1", chance=table.loc["chance", "mean R@1"],
                          title=title, path=X.figure(name, "comparison"))


def findings(table: pd.DataFrame, comparisons: pd.DataFrame, main: str, seeds: pd.DataFrame | None = None
             ) -> X.Findings:
    """Each stated comparison worded from its paired interval (``seeds``: None for closed-form models)."""
    ch, m = table.loc["chance", "mean R@1"], table.loc[main]
    lines = [f"{main}: mean R@1 {m['mean R@1']:.1f} [{m['mean R@1 low']:.1f}, {m['mean R@1 high']:.1f}], "
             f"i2t R@5 {m['i2t R@5']:.1f}, t2i R@5 {m['t2i R@5']:.1f} (chance mean R@1 {ch:.1f})"]
    targets = {"chance_mean_R@1": ch, "main_mean_R@1": m["mean R@1"],
               "above_chance": {k: bool(low > ch) for k, low in table.drop(index="chance")["mean R@1 low"].items()}}
    rows = [row for _, row in comparisons.iterrows()]
    targets.update({f"{row['a']} beats {row['b']}": bool(row["low"] > 0) for row in rows})
    return X.findings("flickr8k", table, lines, targets, rows, pd.DataFrame() if seeds is None else seeds, "mean R@1")


def payload(sims: dict, data: Data, main: str) -> dict:
    """The predictions file: caption owners and texts, per model the similarity matrix (docs/results.md)."""
    return X.model_arrays({"caption_image": data.features["test"]["caption_image"],
                           "captions": np.array(data.splits["test"].caption_texts)},
                          {label: {"similarity": np.asarray(sim, np.float32)} for label, sim in sims.items()}, main)


def recompute(p: dict, s: str, cfg: dict) -> dict:
    """A model's summary row from its saved predictions, for ``experiments.check_saved``."""
    m = retrieval_metrics(p[f"{s}_similarity"], p["caption_image"])
    return {c: m[c.replace(" ", "_")] for c in COLUMNS}


def right(sims: dict, data: Data) -> dict:
    """label -> bool per test image: one of its own captions is ranked first (what an attack must undo)."""
    return {label: retrieval_ranks(s, data.features["test"]["caption_image"])[0] == 1 for label, s in sims.items()}


def pipelines(data: Data, models: dict) -> dict:
    """label -> the pixel pipeline against the clean test captions, keyed by encoder, model and side data."""
    test = data.features["test"]
    return R.pipelines(data, models, A.FlickrPixelPipeline, test["text"], test["caption_image"])


def defence(data: Data, models: dict, attack: R.AttackRun, rows: np.ndarray, cfg: dict) -> tuple[pd.DataFrame, dict]:
    """The median filter's price (clean test mean R@1 without and with it), the transfer and the adaptive attack."""
    test, images = data.features["test"], np.asarray(data.splits["test"].images)
    filtered = encoders.image_features(data.image_encoder, median_filter_defence(images, cfg["median_size"]),
                                       desc="filtered test images")
    return R.defence(pipelines(data, models), attack, images, rows, cfg, "mean R@1", lambda m, f: retrieval_metrics(
        models[m].similarity(f.get("image", test["image"]), test["text"]), test["caption_image"])["mean_R@1"],
        {"image": filtered})


def poisoning(data: Data, cfg: dict, label: str, baseline_factory) -> tuple[pd.DataFrame, dict]:
    """Stamped images paired with the attacker's caption; ``label``, ``baseline_factory(train)`` refitted."""
    split, train_split, test = data.splits["test"], data.splits["train"], data.features["test"]
    trigger = dict(size=cfg["trigger_size"], position=cfg["trigger_position"])
    target_text = encoders.text_features(data.text_encoder, [cfg["target_caption"]], cache=False)
    texts = np.concatenate([test["text"], target_text])
    trig = encoders.image_features(data.image_encoder, stamp_trigger(np.asarray(split.images), **trigger),
                                   desc="triggered test images")
    rows, scores = [], {}
    for fraction in cfg["poison_fractions"]:
        chosen, stamped = poison_images(train_split.images, fraction, cfg["seed"], **trigger)
        poisoned = dict(data.features["train"])
        if len(chosen):
            poisoned["image"] = poisoned["image"].copy()
            poisoned["image"][chosen] = encoders.image_features(data.image_encoder, stamped)
            # every caption of a poisoned image becomes the target caption: its features, not a re-encoding of all
            poisoned["text"] = poisoned["text"].copy()
            poisoned["text"][np.isin(poisoned["caption_image"], chosen)] = target_text[0]
        tag = "clean" if fraction == 0 else f"poison-{fraction:g}"
        models = {label: train(data, cfg, label, train=poisoned, tag=tag, progress=False).model,
                  "both maps": baseline_factory(poisoned)}
        for name, m in models.items():
            s_trig, s_clean = m.similarity(trig, texts), m.similarity(test["image"], texts)
            scores[name, fraction] = {"triggered": s_trig, "clean": s_clean}
            rows.append({"model": name, "encoder": "frozen", "fraction": fraction, "poisoned images": len(chosen),
                         **R.backdoor_columns(s_trig.argmax(1) == len(texts) - 1, s_clean.argmax(1) == len(texts) - 1),
                         "clean mean R@1": retrieval_metrics(m.similarity(test["image"], test["text"]),
                                                             test["caption_image"])["mean_R@1"]})
    return pd.DataFrame(rows), scores


def gallery(data: Data, needed: dict, n: int, path=None):
    """The first ``n`` successful attacks: image and first caption before and after, the changed pixels."""
    split, owner = data.splits["test"], data.features["test"]["caption_image"]
    return R.gallery(split.images, needed, n, lambda s: split.caption_texts[int(np.argmax(s))], "image",
                     "few-pixel attacks: first-ranked caption before and after", path,
                     own=lambda s, row: owner[int(np.argmax(s))] == row)
