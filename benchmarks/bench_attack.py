"""Benchmark (not a test): our few-pixel searches against torchattacks.OnePixel, ART's PixelAttack and the reference
Sparse-RS (fra31/sparse-rs ``RSAttack``).

Model: the offline pretrained MobileNetV2 with its own ImageNet classifier (``utils.encoders``), untargeted, label
= the model's clean prediction. Photos: ones the project never uses, scikit-learn's two sample photos and
scikit-image's bundled colour photos, cut into 224x224 crops; the least confident crops of that pool are attacked.

Part 1, one pixel, the same budget for everyone (population P, G generations, at most P (G + 1) queries per image),
at the paper's population 400 and at a small one: our DE, our sparse search at the same query budget,
torchattacks.OnePixel, ART's PixelAttack(es=1). Every library's output is rounded to uint8 and re-checked with a
plain forward pass; wall time, queries, successes and ratios are printed.
Part 2, our sparse search against our DE at equal query budgets per image, for several k.
Part 3, our sparse search against the reference Sparse-RS, ``RSAttack(norm="L0", loss="margin", p_init=0.3)``
imported unchanged from a checkout of https://github.com/fra31/sparse-rs (``--sparse-rs PATH`` or
``MMER_SPARSE_RS``; the part is skipped with a message when neither is given), at equal queries per image for
k = 1, 4, 16, beside the model's best rate over batch sizes and layouts measured in the same run
(``utils.batching.probe``) and our DE's rate (population 400, one generation) at the same k. Both searches get the
same model object; every success is re-checked on the uint8 image.

The peers live in their own venv, ``.cache/venv-peers`` (never in requirements.txt), created here when missing:
``python -m venv --system-site-packages`` plus a .pth file that shows it the project's packages, then
``pip install --no-deps torchattacks==3.5.1`` and ``pip install adversarial-robustness-toolbox==1.20.1
scikit-image``. The script re-runs itself there. Usage::

    .venv/bin/python benchmarks/bench_attack.py                 # the full run (long on a 2-core CPU)
    .venv/bin/python benchmarks/bench_attack.py --quick         # 2 images, pop 400 and 40 for 2 generations, ...
    .venv/bin/python benchmarks/bench_attack.py --help
    .venv/bin/python benchmarks/bench_attack.py --skip-part1 --skip-part2 --sparse-rs ../sparse-rs  # part 3 only
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PEERS_VENV = REPO / ".cache" / "venv-peers"
PEERS = (["--no-deps", "torchattacks==3.5.1"], ["adversarial-robustness-toolbox==1.20.1", "scikit-image"])


def ensure_peers_venv() -> Path:
    """Create the benchmark's own venv (idempotent) and return its python."""
    py = PEERS_VENV / "bin" / "python"
    check = "import torchattacks, art, skimage, torch"
    if py.exists() and subprocess.run([py, "-c", check], capture_output=True).returncode == 0:
        return py
    print(f"creating {PEERS_VENV} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", PEERS_VENV], check=True)
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # the project's venv (torch, torchvision, scipy, scikit-learn) becomes visible without installing into it
    # a site dir, not a plain path entry, so the project's own .pth files (its editable install) apply too
    project = sysconfig.get_paths()["purelib"]
    Path(purelib, "_project_venv.pth").write_text(f"import site; site.addsitedir({project!r})\n")
    for args in PEERS:
        subprocess.run([py, "-m", "pip", "install", "--quiet", *args], check=True)
    return py


try:
    import art  # noqa: F401
    import skimage  # noqa: F401
    import torchattacks  # noqa: F401
except ImportError:
    if os.environ.get("_BENCH_ATTACK_REEXEC"):
        raise
    python = ensure_peers_venv()
    os.environ["_BENCH_ATTACK_REEXEC"] = "1"
    os.execv(str(python), [str(python), __file__, *sys.argv[1:]])

import art  # noqa: E402
import art.attacks.evasion.pixel_threshold as art_pixel  # noqa: E402
import numpy as np  # noqa: E402
import skimage  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torchattacks  # noqa: E402
import torchvision  # noqa: E402
from art.estimators.classification import PyTorchClassifier  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.datasets import load_sample_images  # noqa: E402

from utils import batching  # noqa: E402
from utils.attack import ClassifierPixelPipeline, differential_evolution, sparse_rs  # noqa: E402
from utils.attack.pipelines import GRAPHS, PRECISIONS  # noqa: E402
from utils.encoders import load_image_encoder, packaged_mobilenet_file  # noqa: E402

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


class Counted(nn.Module):
    """Counts the images that go through the wrapped model (a peer's queries)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.count = model, 0

    def forward(self, x):
        self.count += len(x)
        return self.model(x)


def default_layout_model() -> nn.Module:
    """MobileNetV2 + ImageNet classifier as a peer's user builds it: [0,1] NCHW input, default layout."""
    net = torchvision.models.mobilenet_v2()
    net.load_state_dict(torch.load(packaged_mobilenet_file(), map_location="cpu", weights_only=True))
    norm = torchvision.transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    return nn.Sequential(norm, net).eval()


def photo_pool() -> tuple[np.ndarray, list[str]]:
    """224x224 uint8 crops: the centre square and four corner squares (60 % of the short side) of each photo."""
    photos = dict(zip(("sklearn china", "sklearn flower"), load_sample_images().images))
    photos.update({f"skimage {n}": getattr(skimage.data, n)() for n in SKIMAGE_PHOTOS})
    crops, names = [], []
    for name, img in photos.items():
        img = np.asarray(img)[..., :3]
        h, w = img.shape[:2]
        s, t = min(h, w), int(0.6 * min(h, w))
        boxes = [((w - s) // 2, (h - s) // 2, s), (0, 0, t), (w - t, 0, t), (0, h - t, t), (w - t, h - t, t)]
        for j, (x, y, size) in enumerate(boxes):
            crop = Image.fromarray(img[y:y + size, x:x + size]).resize((224, 224), Image.BICUBIC)
            crops.append(np.asarray(crop, np.uint8))
            names.append(f"{name} crop {j}")
    return np.stack(crops), names


def predict(model, images_uint8: np.ndarray) -> np.ndarray:
    """Plain forward pass on uint8 images: the independent re-check of every library's successes."""
    with torch.inference_mode():
        return model(torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float().div(255)).argmax(1).numpy()


def to_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """A peer's float NCHW output in [0,1] -> the uint8 NHWC image a user would save."""
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def recheck(name, model, clean, adv, labels, k):
    """Successes on the uint8 images, after checking at most k pixels changed (on the reference model, which no
    library ever receives, in eval mode)."""
    if model.training:
        raise AssertionError(f"{name}: the re-check model was left in train mode")
    changed = (adv != clean).any(-1).sum((1, 2))
    if (changed > k).any():
        raise AssertionError(f"{name}: changed {changed.max()} pixels, more than {k}")
    return predict(model, adv) != labels


def margins(model, images_uint8: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Label logit minus the best other logit on the plain model (negative = fooled)."""
    with torch.inference_mode():
        z = model(torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float().div(255)).clone()
        rows, lab = torch.arange(len(z)), torch.from_numpy(labels)
        own = z[rows, lab].clone()
        z[rows, lab] = -torch.inf
        return (own - z.max(1).values).numpy()


def run_ours(fn, pipe, images, labels, model, k, **kw):
    t = time.perf_counter()
    rep = fn(pipe, images, pixels=k, **kw)
    wall = time.perf_counter() - t
    tab = rep.table()
    ok = recheck("ours", model, images, rep.adversarial, labels, k)
    reported = tab.success.to_numpy()
    if (ok != reported).any():
        # Ours confirms with its own fp32 pass (channels_last); the re-check is the peers' default-layout model. On a
        # margin within float rounding of zero the two can disagree; like every library, ours is counted by the
        # re-check, and the disagreement is shown rather than hidden.
        odd = np.flatnonzero(ok != reported)
        print(f"  note: {len(odd)} of ours' verdicts differ on the plain re-check model (image, reported, re-check "
              f"margin): {[(int(i), bool(reported[i]), float(f'{m:.2g}')) for i, m in zip(odd, margins(model, rep.adversarial[odd], labels[odd]))]}"
              "; counted by the re-check", flush=True)
    return dict(wall=wall, queries=int(tab.queries.sum()), success=int(ok.sum()), per_image=tab.queries.to_numpy(),
                won=ok)


def run_torchattacks(reference, images, labels, pop, gens, batch, seed):
    # a model of its own: torchattacks restores the wrapper's training flag after attacking, and a model left in
    # train mode moves its BatchNorm statistics at every forward pass
    counted = Counted(default_layout_model()).eval()
    attack = torchattacks.OnePixel(counted, pixels=1, steps=gens, popsize=pop, inf_batch=batch)
    np.random.seed(seed)  # its DE draws from numpy's global RNG
    xs = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).contiguous()
    t = time.perf_counter()
    adv = attack(xs, torch.from_numpy(labels))
    wall = time.perf_counter() - t
    ok = recheck("torchattacks", reference, images, to_uint8(adv), labels, 1)
    return dict(wall=wall, queries=counted.count, success=int(ok.sum()))


def run_art(reference, images, labels, pop, gens, batch, seed):
    counted = Counted(default_layout_model()).eval()  # a model of its own, as for torchattacks
    clf = PyTorchClassifier(model=counted, loss=nn.CrossEntropyLoss(), input_shape=(3, 224, 224), nb_classes=1000,
                            clip_values=(0.0, 1.0), channels_first=True, device_type="cpu")
    original = art_pixel.differential_evolution
    if pop != 400:  # ART fixes popsize = 400 // (5 pixels); for a smaller population, override that one argument
        def smaller(*a, **kw):
            return original(*a, **{**kw, "popsize": max(1, pop // 5)})
        art_pixel.differential_evolution = smaller
    try:
        attack = art_pixel.PixelAttack(clf, th=1, es=1, max_iter=gens, targeted=False, verbose=False)
        np.random.seed(seed)
        xs = images.transpose(0, 3, 1, 2).astype(np.float32) / 255
        t = time.perf_counter()
        adv = attack.generate(xs, labels)
        wall = time.perf_counter() - t
    finally:
        art_pixel.differential_evolution = original
    ok = recheck("ART", reference, images, to_uint8(adv), labels, 1)
    return dict(wall=wall, queries=counted.count, success=int(ok.sum()))


def load_reference_rsattack(path) -> type:
    """``RSAttack`` from a checkout of fra31/sparse-rs, imported unchanged. Its ``from utils import Logger`` would
    find this project's ``utils`` package, so the checkout's utils.py is registered as ``utils`` only while
    rs_attacks.py is imported; this project's entry is put back afterwards."""
    import importlib.util

    path = Path(path).expanduser()
    for name in ("rs_attacks.py", "utils.py"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"--sparse-rs {path}: no {name} there; give a checkout of "
                                    "https://github.com/fra31/sparse-rs")

    def load(name, file):
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    ours = sys.modules.get("utils")
    sys.modules["utils"] = load("sparse_rs_utils", path / "utils.py")
    try:
        return load("sparse_rs_attacks", path / "rs_attacks.py").RSAttack
    finally:
        if ours is None:
            sys.modules.pop("utils", None)
        else:
            sys.modules["utils"] = ours


def run_reference(rsattack, model, reference, images, labels, k, queries, seed):
    """The reference Sparse-RS on the same model: wall time, model images, successes re-checked on uint8."""
    counted = Counted(model)
    attack = rsattack(counted, norm="L0", eps=k, n_queries=queries, p_init=0.3, n_restarts=1, seed=seed,
                      loss="margin", verbose=False, device="cpu")
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).contiguous()
    t = time.perf_counter()
    qr, adv = attack.perturb(x, torch.from_numpy(labels))
    wall = time.perf_counter() - t
    ok = recheck("reference Sparse-RS", reference, images, to_uint8(adv), labels, k)
    per_image = np.where(qr.cpu().numpy() > 0, qr.cpu().numpy(), queries).astype(int)
    return dict(wall=wall, images=counted.count, success=int(ok.sum()), per_image=per_image, won=ok)


def attacked_crops(probs: torch.Tensor, n: int, how: str, seed: int) -> np.ndarray:
    """Sorted indices of the crops to attack: the ``n`` least confident (top-1 minus top-2 probability) or a seeded
    random draw of ``n``."""
    if how == "random":
        return np.sort(np.random.default_rng(seed).choice(len(probs), size=n, replace=False))
    top2 = probs.topk(2).values
    return torch.argsort(top2[:, 0] - top2[:, 1])[:n].sort().values.numpy()


def sustained_rate(pipe, batch: int, size, seconds: float = 5.0, autocast=None, traced=False) -> float:
    """Images/s of the pipeline's model alone at one batch size, over several seconds (the probe's figure is the
    best of a few calls; on a loaded machine that flatters it); through frozen graphs if ``traced``."""
    x = torch.rand((batch, 3, *size))
    x = x.contiguous(memory_format=torch.channels_last) if pipe.channels_last else x
    rows = torch.zeros(batch, dtype=torch.int64)
    with (torch.inference_mode(), torch.autocast("cpu", dtype=autocast, enabled=autocast is not None),
          batching.traced(*pipe.modules, enabled=traced)):
        pipe.scores(x, rows)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            pipe.scores(x, rows)
            n += batch
    return n / (time.perf_counter() - t0)


def part_reference(args, pipe, ours_model, reference, images, labels):
    """Part 3: our sparse search against the reference Sparse-RS, and both against the model's best rate."""
    path = args.sparse_rs or os.environ.get("MMER_SPARSE_RS")
    print("\nPART 3: our sparse search vs the reference Sparse-RS (fra31/sparse-rs RSAttack), equal queries per image")
    if not path:
        print("  skipped: no checkout of https://github.com/fra31/sparse-rs given (--sparse-rs PATH or "
              "MMER_SPARSE_RS=PATH)")
        return
    rsattack = load_reference_rsattack(path)
    n, rows = len(images), np.arange(len(images))
    print(f"  reference: {Path(path).resolve()}; RSAttack(norm='L0', eps=k, n_queries=Q, p_init=0.3, n_restarts=1, "
          f"loss='margin', seed={args.seed}): one proposal per unfooled image per call, strict acceptance, colours "
          "at cube corners; gets the same model object as ours")
    autocast = PRECISIONS[args.precision]
    traced = args.graph == "traced"
    print(f"  ours: sparse_rs(pixels=k, queries=Q, p_init=0.3, candidates adaptive, batch_size="
          f"{args.batch_size or 'the probe choice'}, precision={args.precision}, graph={args.graph} (successes "
          f"confirmed in eager fp32), seed={args.seed})")
    print(f"  {'k':>3s} {'Q':>6s} | {'ours s':>7s} {'img/s':>6s} {'q/s':>6s} {'succ':>5s} {'med q':>6s} | "
          f"{'ref s':>7s} {'img/s':>6s} {'succ':>5s} {'med q':>6s} | {'best img/s':>10s} {'ours/best':>9s} "
          f"{'wall ours/ref':>13s} | {'DE i/s':>6s} {'DE/best':>7s}")
    med = lambda r, q: float(np.median(q[r["won"]])) if r["won"].any() else float("nan")  # noqa: E731
    layout = lambda cl: (setattr(pipe, "channels_last", cl), batching.set_layout(ours_model, cl))  # noqa: E731

    def scores(x, graph: bool):  # in the search's precision and graph: its best rate is the one to reach
        with (torch.autocast("cpu", dtype=autocast, enabled=autocast is not None),
              batching.traced(*pipe.modules, enabled=graph)):
            return pipe.scores(x, torch.as_tensor(rows[:1]).expand(len(x)))

    def model_best(graph: bool):  # the probe's fastest batch and layout, then that rate sustained over seconds
        choice = batching.probe(lambda x: scores(x, graph), (3, *images.shape[1:3]), pipe.device, layout)
        layout(choice.channels_last)
        return choice, sustained_rate(pipe, choice.batch, images.shape[1:3], autocast=autocast, traced=graph)

    for budget in args.rs_budgets:
        for k in args.ks:
            # the model alone at its best batch and layout, measured now (same load as the two runs around it)
            eager, eager_rate = model_best(False)
            best, best_rate = model_best(True) if traced else (eager, eager_rate)
            batch = args.batch_given or batching.for_pipeline(pipe, (3, *images.shape[1:3]), rows, autocast,
                                                              traced).batch  # the library's (cached) choice
            t = time.perf_counter()
            rep = sparse_rs(pipe, images, pixels=k, queries=budget, batch_size=batch, seed=args.seed,
                            precision=args.precision, graph=args.graph)
            wall = time.perf_counter() - t
            tab = rep.table()
            ok = recheck("ours", reference, images, rep.adversarial, labels, k)
            ours = dict(wall=wall, won=ok, per_image=tab.queries.to_numpy())
            ref = run_reference(rsattack, ours_model, reference, images, labels, k, budget, args.seed)
            q_ours = int(tab.queries.sum())
            t = time.perf_counter()  # our DE at the paper's population, one generation: its rate, not its success
            de = differential_evolution(pipe, images, pixels=k, popsize=400, generations=1, batch_size=batch,
                                        seed=args.seed, precision=args.precision, graph=args.graph)
            de_rate = de.model_queries / (time.perf_counter() - t)
            print(f"  {k:3d} {budget:6d} | {wall:7.1f} {rep.model_queries / wall:6.1f} {q_ours / wall:6.1f} "
                  f"{int(ok.sum()):3d}/{n:<1d} {med(ours, ours['per_image']):6.0f} | {ref['wall']:7.1f} "
                  f"{ref['images'] / ref['wall']:6.1f} {ref['success']:3d}/{n:<1d} {med(ref, ref['per_image']):6.0f} | "
                  f"{best_rate:10.1f} {rep.model_queries / wall / best_rate:9.2f} {wall / ref['wall']:13.2f} | "
                  f"{de_rate:6.1f} {de_rate / best_rate:7.2f}  "
                  f"(batch {batch}; best {best.batch} {'channels_last' if best.channels_last else 'default'}, "
                  f"peak of the probe {best.rate:.1f}; eager best {eager_rate:.1f} at {eager.batch}, ref/eager "
                  f"{ref['images'] / ref['wall'] / eager_rate:.2f}; "
                  f"load {os.getloadavg()[0]:.1f})", flush=True)
    print("  img/s: images through the model per wall second (ours: discarded speculative proposals included); "
          "q/s: queries as the budget counts them; med q: median queries per success; best img/s: the model alone "
          "at the batch and layout the probe found fastest, sustained over 5 s; DE: our differential_evolution, "
          "popsize 400, 1 generation (800 queries per image), same batch and precision; targets: ours/best and "
          "DE/best >= 0.9, wall ours/ref <= 0.5, success >= the reference's")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=8, help="images attacked (the least confident crops of the pool)")
    ap.add_argument("--populations", type=int, nargs="+", default=[400, 40], help="part 1 populations (paper 400)")
    ap.add_argument("--generations", type=int, default=4, help="part 1 DE generations (paper: up to 100)")
    ap.add_argument("--budgets", type=int, nargs="+", default=[500, 2000, 10000], help="part 2 queries per image")
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 4, 16], help="part 2 pixel counts")
    ap.add_argument("--de-popsize", type=int, default=100, help="part 2 DE population (capped at budget / 2)")
    ap.add_argument("--candidates", type=int, default=None,
                    help="sparse search: at most this many proposals per image and call (default adaptive)")
    ap.add_argument("--batch-size", type=int, default=None, help="model batch (default: utils.batching's choice)")
    ap.add_argument("--sparse-rs", default=None, help="part 3: a checkout of fra31/sparse-rs (or MMER_SPARSE_RS)")
    ap.add_argument("--rs-budgets", type=int, nargs="+", default=[500, 2000],
                    help="part 3 queries per image (add 10000 for the paper's budget: long on a CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pick", choices=["least-confident", "random"], default="least-confident",
                    help="which crops are attacked: the least confident (fragile: fooled within a few queries) or a "
                         "seeded random draw (mostly confident, as unseen photos are; most resist k = 1)")
    ap.add_argument("--precision", choices=list(PRECISIONS), default="float32",
                    help="part 3: the precision our search scores in (successes are always confirmed in fp32)")
    ap.add_argument("--graph", choices=list(GRAPHS), default="traced",
                    help="part 3: how our search runs the encoder: TorchScript-frozen (the default) or eager")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default torch's; on a machine other "
                    "jobs load, 1 thread avoids OpenMP spin-waits and can be several times faster)")
    ap.add_argument("--skip-peers", action="store_true", help="part 1 without torchattacks and ART")
    ap.add_argument("--skip-part1", action="store_true")
    ap.add_argument("--skip-part2", action="store_true")
    ap.add_argument("--skip-part3", action="store_true")
    ap.add_argument("--quick", action="store_true",
                    help="2 images; part 1: populations 400 and 40, 2 generations; part 2: budgets 500 and 2000")
    args = ap.parse_args()
    if args.quick:
        args.images, args.generations, args.budgets = 2, 2, [500, 2000]
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(f"torch {torch.__version__}, torchattacks {torchattacks.__version__}, ART {art.__version__}, "
          f"scikit-image {skimage.__version__}, threads {torch.get_num_threads()}, cores {os.cpu_count()}, "
          f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (a shared machine: wall times vary with it)")

    enc = load_image_encoder("mobilenet_v2", device="cpu")
    ours_model = nn.Sequential(enc, enc.head).eval()  # utils.encoders: channels_last on CPU
    peer_model = default_layout_model()  # the re-check reference: no library is ever given this instance
    pool, names = photo_pool()
    with torch.inference_mode():
        probs = peer_model(torch.from_numpy(pool).permute(0, 3, 1, 2).float().div(255)).softmax(1)
    pick = attacked_crops(probs, args.images, args.pick, args.seed)
    images, labels = pool[pick], probs.argmax(1).numpy()[pick]
    print(f"images: {args.images} of {len(pool)} crops ({args.pick}): {[names[i] for i in pick]}")
    pipe = ClassifierPixelPipeline(ours_model, labels, n_classes=1000)
    choice = batching.for_pipeline(pipe, (3, *images.shape[1:3]), np.arange(len(images))).batch
    print(f"model batch: {args.batch_size or choice} ({'given' if args.batch_size else 'utils.batching'}; the "
          f"machine's fastest: {choice} in {'channels_last' if pipe.channels_last else 'the default layout'})")
    args.batch_given, args.batch_size = args.batch_size, args.batch_size or choice
    if not args.skip_part3:
        part_reference(args, pipe, ours_model, peer_model, images, labels)

    # ---------------------------------------------------------------------------------------------- part 1
    print("\nPART 1: one pixel, same population and generations for every library")
    for pop in [] if args.skip_part1 else args.populations:
        gens, budget = args.generations, pop * (args.generations + 1)
        print(f"\n population {pop}, {gens} generations: at most {budget} queries per image")
        print(f"  ours DE      : differential_evolution(pixels=1, popsize={pop}, generations={gens}, F=0.5, "
              f"DE/rand/1 no crossover, batch_size={args.batch_size}, fp32, channels_last, early stop per image, "
              f"seed={args.seed})")
        print(f"  ours sparse  : sparse_rs(pixels=1, queries={budget}, candidates={args.candidates}, p_init=0.3, "
              f"L0 schedule rescaled, corner colours, batch_size={args.batch_size}, fp32, seed={args.seed})")
        d = 5
        print(f"  torchattacks : OnePixel(pixels=1, steps={gens}, popsize={pop}, inf_batch={args.batch_size}) -> "
              f"scipy-style DE, population (popsize // {d}) * {d} = {max(1, pop // d) * d}, best1bin, mutation "
              f"dithered in (0.5, 1), recombination 1, init random, colours continuous in [0,1], early stop when "
              f"the best member succeeds; one image at a time")
        print(f"  ART          : PixelAttack(th=1, es=1, max_iter={gens}, targeted=False) -> its DE, popsize "
              f"{'400 // 5 (fixed by ART)' if pop == 400 else f'{pop // 5} (ART fixes 400 // 5; overridden)'} x 5 "
              f"= {max(1, pop // 5) * 5}, best1bin, mutation (0.5, 1), recombination 1, latin hypercube init, "
              f"early stop via callback; one image at a time; PyTorchClassifier batch 128")
        rows = {"ours DE": run_ours(differential_evolution, pipe, images, labels, peer_model, 1, popsize=pop,
                                    generations=gens, batch_size=args.batch_size, seed=args.seed)}
        print(f"  ... ours DE done in {rows['ours DE']['wall']:.1f} s", flush=True)
        rows["ours sparse"] = run_ours(sparse_rs, pipe, images, labels, peer_model, 1, queries=budget,
                                       candidates=args.candidates, batch_size=args.batch_size, seed=args.seed)
        print(f"  ... ours sparse done in {rows['ours sparse']['wall']:.1f} s", flush=True)
        if not args.skip_peers:
            rows["torchattacks"] = run_torchattacks(peer_model, images, labels, pop, gens, args.batch_size,
                                                    args.seed)
            print(f"  ... torchattacks done in {rows['torchattacks']['wall']:.1f} s", flush=True)
            rows["ART"] = run_art(peer_model, images, labels, pop, gens, args.batch_size, args.seed)
            print(f"  ... ART done in {rows['ART']['wall']:.1f} s", flush=True)
        n = len(images)
        print(f"  {'':13s} {'wall s':>8s} {'queries':>8s} {'queries/s':>10s} {'success (uint8 re-check)':>25s}")
        for name, r in rows.items():
            print(f"  {name:13s} {r['wall']:8.1f} {r['queries']:8d} {r['queries'] / r['wall']:10.1f} "
                  f"{r['success']:20d}/{n}")
        peers = [(name, r) for name, r in rows.items() if not name.startswith("ours")]
        if peers:
            ours = [(name, r) for name, r in rows.items() if name.startswith("ours")]
            best_peer = max(r["success"] for _, r in peers)
            fast_peer = min(r["wall"] for _, r in peers if r["success"] == best_peer)
            reaching = [(r["wall"], name) for name, r in ours if r["success"] >= best_peer]
            if reaching:
                wall, name = min(reaching)
                print(f"  -> {name} reaches the peers' best success ({best_peer}/{n}) {fast_peer / wall:.1f}x "
                      f"sooner in wall time than the fastest peer with that success (target >= 3x at pop 400)")
            else:
                print(f"  -> none of ours reaches the peers' best success ({best_peer}/{n}) at this budget")
            for name, r in peers:
                print(f"     ours DE vs {name}: {r['wall'] / rows['ours DE']['wall']:.2f}x wall, "
                      f"{(r['wall'] / max(r['queries'], 1)) / (rows['ours DE']['wall'] / rows['ours DE']['queries']):.2f}x "
                      f"cost per query")

    # ---------------------------------------------------------------------------------------------- part 2
    if args.skip_part2:
        return
    print("\nPART 2: our sparse search vs our DE at equal query budgets per image "
          f"(sparse: candidates={args.candidates}, p_init=0.3; DE: popsize=min({args.de_popsize}, budget // 2), "
          f"generations = budget // popsize - 1, F=0.5)")
    print(f"  {'k':>3s} {'budget':>7s} {'DE pop':>6s} {'DE succ':>8s} {'DE med q':>9s} {'DE s':>7s} "
          f"{'RS succ':>8s} {'RS med q':>9s} {'RS s':>7s} {'RS succ within budget/4':>24s}")
    n = len(images)
    for k in args.ks:
        for budget in args.budgets:
            pop = min(args.de_popsize, budget // 2)
            de = run_ours(differential_evolution, pipe, images, labels, peer_model, k, popsize=pop,
                          generations=budget // pop - 1, batch_size=args.batch_size, seed=args.seed)
            rs = run_ours(sparse_rs, pipe, images, labels, peer_model, k, queries=budget,
                          candidates=args.candidates, batch_size=args.batch_size, seed=args.seed)
            med = lambda r: float(np.median(r["per_image"][r["won"]])) if r["won"].any() else float("nan")  # noqa: E731
            quarter = int((rs["won"] & (rs["per_image"] <= budget // 4)).sum())
            print(f"  {k:3d} {budget:7d} {pop:6d} {de['success']:5d}/{n:<2d} {med(de):9.0f} {de['wall']:7.1f} "
                  f"{rs['success']:5d}/{n:<2d} {med(rs):9.0f} {rs['wall']:7.1f} {quarter:21d}/{n:<2d}", flush=True)


if __name__ == "__main__":
    main()


def whitebox_rows():
    """Part 4: the white-box Sparse-PGD, the sparse search and their ensemble on the same classifier and photos,
    and the ensemble against the median filter placed inside the model (the adaptive defence, largest k).

    One ``ensemble(..., black_box_all=True)`` call per k runs both members on every attacked image, so each
    member's own success and cost are measured; the ensemble's result (white-box first, black-box on what it left)
    follows per image, because every image's search does not depend on the others in the batch. Queries are
    forward-equivalent (a Sparse-PGD step counts 3: forward + backward); the measured wall time per step over the
    wall time per search query is printed too. Every success is re-checked on the uint8 image with the plain
    reference model (after scipy's median filter for the defended rows). Uses ``--images``, ``--ks``, ``--seed``,
    ``--quick`` of the main command line; ``BENCH_WHITEBOX_STEPS`` (20), ``BENCH_WHITEBOX_RESTARTS`` (2) and
    ``BENCH_WHITEBOX_QUERIES`` (the search's queries, default 3 x steps x restarts: an equal forward-equivalent
    budget); ``BENCH_WHITEBOX=off`` skips this part, ``BENCH_WHITEBOX_ADAPTIVE=off`` its (slow) adaptive rows.
    """
    if os.environ.get("BENCH_WHITEBOX", "on") == "off":
        return
    from scipy import ndimage

    from utils.attack import MedianDefended, ensemble

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pick", choices=["least-confident", "random"], default="least-confident")
    ap.add_argument("--quick", action="store_true")
    args, _ = ap.parse_known_args()
    steps = int(os.environ.get("BENCH_WHITEBOX_STEPS", 5 if args.quick else 20))
    restarts = int(os.environ.get("BENCH_WHITEBOX_RESTARTS", 2))
    queries = int(os.environ.get("BENCH_WHITEBOX_QUERIES", 3 * steps * restarts))
    n_images = 2 if args.quick else args.images
    enc = load_image_encoder("mobilenet_v2", device="cpu")
    pipe_model = nn.Sequential(enc, enc.head).eval()
    peer_model = default_layout_model()
    pool, names = photo_pool()
    with torch.inference_mode():  # the same crops as the other parts
        probs = peer_model(torch.from_numpy(pool).permute(0, 3, 1, 2).float().div(255)).softmax(1)
    pick = attacked_crops(probs, n_images, args.pick, args.seed)
    images, labels = pool[pick], probs.argmax(1).numpy()[pick]
    pipe = ClassifierPixelPipeline(pipe_model, labels, n_classes=1000)
    load = os.getloadavg()
    print(f"\nPART 4: white-box Sparse-PGD ({steps} steps x {restarts} restarts, variants unprojected then projected, "
          f"alpha 0.25, beta 0.25, patience 3, batch 16), sparse search ({queries} queries, batch: the device's "
          f"fastest), ensemble (white-box first, search on what it left); {n_images} images, seed {args.seed}, "
          f"load average {load[0]:.1f} (a shared machine: compare within this run)")
    print(f"  {'k':>3s} {'attack':46s} {'success':>8s} {'wall s':>7s} {'queries':>8s} {'med q/succ':>10s}"
          "   (success: of the images the model gets right; queries: forward-equivalent, summed over the images; "
          "~ wall: the white-box run plus the search's share on what it left)")

    def verdict(adv, k, defended):
        """Fooled on the plain reference model (after scipy's 3x3 median for the defended rows); <= k pixels."""
        changed = (adv != images).any(-1).sum((1, 2))
        if (changed > k).any():
            raise AssertionError(f"changed {changed.max()} pixels, more than {k}")
        seen = ndimage.median_filter(adv, size=(1, 3, 3, 1), mode="reflect") if defended else adv
        return predict(peer_model, seen) != labels

    def rows_for(k, target, defended):
        rep = ensemble(target, images, pixels=k, queries=queries, steps=steps, restarts=restarts, seed=args.seed,
                       black_box_all=True)
        t, n = rep.table(), len(images)
        m = int(t.attacked.sum())  # images the (defended) model gets right
        white, black = rep.members["white-box"], rep.members["black-box"]
        ran = np.flatnonzero(t.black_box_ran)
        b_adv = images.copy()
        if len(ran):
            b_adv[ran] = black.adversarial
        w_ok = verdict(white.adversarial, k, defended) & t.attacked.to_numpy()
        b_ok = verdict(b_adv, k, defended) & t.black_box_ran.to_numpy()
        wq, bq = white.table().queries.to_numpy(), np.zeros(n, np.int64)
        bq[ran] = black.table().queries.to_numpy()
        cascade_q = wq + np.where(w_ok, 0, bq)  # the search runs only on what the white-box member left
        # wall of the cascade: the white-box run plus the search's time in proportion to its queries on those items
        cascade_s = white.seconds + black.seconds * bq[~w_ok].sum() / max(bq.sum(), 1)
        step_s = white.search_seconds / max(white.model_queries / 3, 1)
        query_s = black.search_seconds / max(black.model_queries, 1)
        tag = "median 3x3 inside: " if defended else ""
        med = lambda q, ok: f"{np.median(q[ok]):10.0f}" if ok.any() else f"{'-':>10s}"  # noqa: E731
        for name, ok, q, wall in ((f"{tag}sparse-PGD (white-box)", w_ok, wq, f"{white.seconds:7.1f}"),
                                  (f"{tag}sparse search (black-box)", b_ok, bq, f"{black.seconds:7.1f}"),
                                  (f"{tag}ensemble (cascade)", w_ok | b_ok, cascade_q, f"~{cascade_s:6.0f}")):
            print(f"  {k:3d} {name:46s} {int(ok.sum()):5d}/{m:<2d} {wall:>7s} {int(q.sum()):8d} {med(q, ok)}",
                  flush=True)
        print(f"      one Sparse-PGD step took {step_s / query_s:.1f}x the wall time of one search query "
              f"(counted as 3); the report's own verdicts agree with the re-check: "
              f"{bool((t.success.to_numpy() == (w_ok | b_ok)).all())}", flush=True)
        return rep, w_ok | b_ok

    last = None
    for k in args.ks:
        last = (k, *rows_for(k, pipe, False))
    k, rep, ok = last
    right = ~verdict(images, k, True)  # the images the filtered model gets right: the only ones a defence can save
    transfer = int((verdict(rep.adversarial, k, True) & ok & right).sum())
    print(f"  transfer: {transfer} of the {int((ok & right).sum())} ensemble successes at k={k} on the "
          f"{int(right.sum())} images the filtered model gets right still fool it through the median filter",
          flush=True)
    if os.environ.get("BENCH_WHITEBOX_ADAPTIVE", "on") != "off":
        print("  adaptive (same budget, the filter inside the model, BPDA gradient for the white-box member):")
        rows_for(k, MedianDefended(pipe, 3), True)


if __name__ == "__main__":
    whitebox_rows()
