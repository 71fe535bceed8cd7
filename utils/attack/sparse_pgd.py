"""White-box Sparse-PGD (Zhong & Liu 2024, arXiv 2405.05075) from the photo's uint8 pixels (docs/attacks.md)."""

import time
from types import SimpleNamespace

import numpy as np
import torch

from .pipelines import AttackReport, PixelPipeline, Scorer, assemble_report, prepare_attack, to_input

WHERE = "utils/attack/sparse_pgd.py"
VARIANTS = ("unprojected", "projected")
STEP_COST = 3  # forward-equivalent queries of one forward + backward pass
ALPHA, BETA, PATIENCE = 0.25, 0.25, 3  # magnitude step, mask step (times sqrt(H W)), steps before a fresh mask


def project_mask(mask: torch.Tensor, k: int) -> torch.Tensor:
    """0/1 mask (B,1,H,W) with ones at the k largest entries of ``mask`` (B,1,H,W) per image."""
    flat = mask.flatten(1)
    out = torch.zeros_like(flat).scatter_(1, flat.topk(k, dim=1).indices, 1.0)
    return out.view_as(mask)


class _Compose(torch.autograd.Function):
    """Forward: the masked pixels set to their rounded colours (a uint8 image). Backward: straight through the
    rounding, to p through ``p_route``'s mask, to the continuous mask through the projection."""

    @staticmethod
    def forward(ctx, clean, p, soft, hard, p_route):
        colours = torch.round((clean + p) * 255).clamp_(0, 255) / 255
        ctx.save_for_backward(colours - clean, soft if p_route == "unprojected" else hard)
        return torch.where(hard > 0, colours, clean)

    @staticmethod
    def backward(ctx, grad):
        delta, route = ctx.saved_tensors
        return None, grad * route, (grad * delta).sum(1, keepdim=True), None, None


def _draw(rng: np.random.Generator, clean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The paper's fresh start: magnitude uniform in [-1, 1] clipped to the image's range, a standard normal mask."""
    x = clean.transpose(2, 0, 1).astype(np.float32) / 255
    p = np.clip(rng.uniform(-1, 1, x.shape).astype(np.float32), -x, 1 - x)
    return p, rng.standard_normal((1, *x.shape[1:])).astype(np.float32)


def _warm(p: np.ndarray, mask: np.ndarray, clean: np.ndarray, init: np.ndarray) -> None:
    """Start from given pixels (<=k,5; negative x = padding): their mask entries first, their colours as p."""
    init = np.asarray(init, np.int64)
    init = init[init[:, 0] >= 0]
    x, y = init[:, 0], init[:, 1]
    mask[0, y, x] = 10.0  # above any standard normal draw the other pixels get
    p[:, y, x] = (init[:, 2:5].T - clean[y, x].T.astype(np.float32)) / 255


def sparse_pgd(pipeline: PixelPipeline, images: np.ndarray, rows=None, truth: np.ndarray | None = None, *,
               pixels: int = 1, steps: int = 100, restarts: int = 2, queries: int | None = None, seed: int = 0,
               batch_size: int = 16, init: np.ndarray | None = None) -> AttackReport:
    """Sparse-PGD changing at most ``pixels`` pixels per image: ``restarts`` runs of at most ``steps`` steps;
    ``queries`` count forward-equivalents (``STEP_COST`` per step, 1 per confirmation) and, if given, set ``steps``."""
    if queries is not None:
        steps = int(queries) // (STEP_COST * max(int(restarts), 1))
    if steps < 1 or restarts < 1:
        raise ValueError(f"{WHERE}: need steps >= 1 (queries >= {STEP_COST * max(restarts, 1)}) and restarts >= 1")
    scorer = prepare_attack(pipeline, images, rows, truth, pixels, batch_size, WHERE)
    k = pixels
    settings = dict(method="sparse-pgd", pixels=k, steps=steps, restarts=restarts,
                    variants=[VARIANTS[r % 2] for r in range(restarts)], alpha=ALPHA, beta=BETA,
                    patience=PATIENCE, loss="margin of the scores", step_cost=STEP_COST,
                    queries_counted=f"{STEP_COST} per step (forward + backward), 1 per fp32 confirmation",
                    colours="rounded to uint8 in every forward pass", batch_size=batch_size, seed=seed,
                    precision="float32")
    todo = np.flatnonzero(scorer.attacked)
    books = SimpleNamespace(  # per attacked image (position in the batch): RNG, cost, steps, best margin and pixels
        rngs={int(i): np.random.default_rng([seed, int(scorer.rows[i])]) for i in todo},
        spent=dict.fromkeys(todo.tolist(), 0), taken=dict.fromkeys(todo.tolist(), 0),
        best=dict.fromkeys(todo.tolist(), np.inf), final={}, found={})  # final, found: pixels and confirmed scores
    truth_all = torch.as_tensor(scorer.truth, device=pipeline.device)
    for r in range(restarts):
        left = [int(i) for i in todo if int(i) not in books.found]
        for s in range(0, len(left), batch_size):
            _run(scorer, books, left[s:s + batch_size], VARIANTS[r % 2], steps, k,
                 None if init is None or r else init, truth_all)
    return assemble_report(scorer, books.final, books.found, books.spent, books.taken, settings)


def _run(scorer: Scorer, books: SimpleNamespace, idx: list[int], variant: str, steps: int, k: int, init,
         truth_all) -> None:
    """One restart on images ``idx`` (positions in the attacked batch): each leaves when its success holds in fp32."""
    pipeline, dev = scorer.pipeline, scorer.pipeline.device
    draws = [_draw(books.rngs[i], scorer.images[i]) for i in idx]
    if init is not None:
        for (p, m), i in zip(draws, idx):
            _warm(p, m, scorer.images[i], init[i])
    clean = to_input(scorer.images[idx], dev, pipeline.channels_last)
    p = torch.stack([torch.from_numpy(d[0]) for d in draws]).to(dev)
    p = p.contiguous(memory_format=torch.channels_last) if pipeline.channels_last else p  # the clean image's layout
    mask = torch.stack([torch.from_numpy(d[1]) for d in draws]).to(dev)
    rows = torch.as_tensor(scorer.rows[idx], device=dev)
    ids = np.array(idx)
    still = np.zeros(len(ids), np.int64)  # steps for which the projected mask has not changed
    h, w = scorer.images.shape[1:3]
    for _ in range(steps):
        p.requires_grad_(True)
        mask.requires_grad_(True)
        with torch.enable_grad():
            soft = torch.sigmoid(mask)
            hard = project_mask(mask.detach(), k)  # the order of sigmoid(m~), without its float32 ties at 1.0
            x = _Compose.apply(clean, p, soft, hard, variant)
            truth = truth_all[torch.as_tensor(ids, device=dev)]
            t0 = time.perf_counter()
            scores, margin, g_p, g_m = _margin_gradients(pipeline, x, rows, truth, p, mask)
            scorer.model_seconds += time.perf_counter() - t0
        scorer.queries += STEP_COST * len(ids)
        with torch.no_grad():
            p, mask = p.detach(), mask.detach()
            hit = ~truth.gather(1, scores.argmax(1, keepdim=True)).squeeze(1)
            done = _record(scorer, books, ids, _candidates(x, hard, k), margin.detach().cpu().numpy(),
                           hit.cpu().numpy())
            # descend the margin: signed step for the magnitude, normalised step for the continuous mask
            p = torch.minimum(torch.maximum(p - ALPHA * g_p.sign(), -clean), 1 - clean)
            norm = g_m.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]
            mask = mask - BETA * np.sqrt(h * w) * g_m / norm
            same = (project_mask(mask, k) == hard).flatten(1).all(1).cpu().numpy()
            still = np.where(same, still + 1, 0)
            for j in np.flatnonzero((still >= PATIENCE) & ~done):  # the paper's random re-initialisation
                fresh = books.rngs[int(ids[j])].standard_normal((1, h, w)).astype(np.float32)
                mask[j] = torch.from_numpy(fresh).to(dev)
                still[j] = 0
            keep = np.flatnonzero(~done)
            if not len(keep):
                return
            if len(keep) < len(ids):
                kt = torch.as_tensor(keep, device=dev)
                ids, still = ids[keep], still[keep]
                clean, p, mask, rows = clean[kt], p[kt], mask[kt], rows[kt]


def _record(scorer: Scorer, books: SimpleNamespace, ids: np.ndarray, cands: np.ndarray, margin: np.ndarray,
            hit: np.ndarray) -> np.ndarray:
    """Book one step's cost and best candidates; confirm its successes in fp32; which images are done."""
    for j, i in enumerate(ids.tolist()):
        books.spent[i] += STEP_COST
        books.taken[i] += 1
        if margin[j] < books.best[i]:
            books.best[i], books.final[i] = float(margin[j]), cands[j]
    done = np.zeros(len(ids), bool)
    if hit.any():
        j_hit = np.flatnonzero(hit)
        _, ok, sc = scorer.confirm(ids[j_hit], cands[j_hit])
        for j, good, scores_j in zip(j_hit, ok, sc):
            i = int(ids[j])
            books.spent[i] += 1
            if good:
                books.final[i], books.found[i] = cands[j], scores_j
                done[j] = True
    return done


def _margin_gradients(pipeline: PixelPipeline, x, rows, truth, p, mask):
    """Scores, margins and their gradients for p and the mask, or an error naming a non-differentiable pipeline."""
    why = (f"{WHERE}: {type(pipeline).__name__}.scores is not differentiable from the pixels, so the white-box "
           "attack cannot run on it (use method='sparse' for this pipeline)")
    try:  # a tensor made under inference_mode, or a detour through numpy, breaks the graph with a RuntimeError
        scores = pipeline.scores(x, rows).float()
        neg = torch.tensor(-torch.inf, device=scores.device, dtype=scores.dtype)  # the margin, differentiable
        margin = torch.where(truth, scores, neg).amax(1) - torch.where(truth, neg, scores).amax(1)
        g_p, g_m = torch.autograd.grad(margin.sum(), (p, mask), allow_unused=True)
    except RuntimeError as e:
        raise ValueError(f"{why}: {e}") from e
    if g_p is None or g_m is None:
        raise ValueError(why)
    return scores, margin, g_p, g_m


def _candidates(x: torch.Tensor, hard: torch.Tensor, k: int) -> np.ndarray:
    """The (B,k,5) pixels of each scored image: the mask's k positions with their uint8 colours."""
    b, _, h, w = hard.shape
    pos = hard.flatten(1).topk(k, dim=1).indices  # the k ones
    colours = torch.round(x.flatten(2) * 255).to(torch.int64).gather(2, pos[:, None, :].expand(b, 3, k))
    pos = pos.cpu().numpy()
    return np.concatenate([np.stack([pos % w, pos // w], -1), colours.permute(0, 2, 1).cpu().numpy()], -1)
