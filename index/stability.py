"""Which of an explanation's supporters are robust: across checkpoints, scorings and projection seeds.

A method that sums over checkpoints (TracIn, TRAK) has query and training vectors made of one block per checkpoint,
u = [u_1 … u_C] and v_i = [v_i1 … v_iC], so its score is a sum of per-checkpoint scores <v_ic, u_c>. A supporter
that is in the top K of most checkpoints is robust; one that is there through a single checkpoint is noise of
where training happened to stop. The other scoring (cosine against raw) asks another question of the same vectors,
and a supporter in both lists answers both. Sketched vectors are computed again under a second projection seed (in
memory: every training vector once more, with the feature cache), and a supporter in both seeds' lists does not
owe its place to the sketch; exact gradients (no projection) make the seed moot.

    stability(explainer, other_scoring_explainer_or_None, "an input", k=10)   → dict (see :func:`stability`)
"""

from __future__ import annotations

from dataclasses import replace
from itertools import combinations

import numpy as np
import torch

from datablame.influence.build import build_method
from datablame.influence.data import Text
from datablame.influence.methods import compute_train_vectors

from .explain import Explainer
from .search import prepare, top_k


def jaccard(a, b) -> float:
    """|a ∩ b| / |a ∪ b| of two id collections (1 for two empty ones)."""
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


def top_ids(scores: np.ndarray, k: int) -> list[int]:
    """Ids of the k largest of (n,) scores, largest first (:func:`.search.top_k` of one row)."""
    return top_k(scores[None], min(k, len(scores)))[1][0].tolist()


def checkpoint_tops(explainer: Explainer, query: np.ndarray, k: int) -> list[list[int]]:
    """The top-k supporting ids under each checkpoint's block of the vectors alone: (C lists), for a method whose
    (D,) query and (n, D) training vectors are C equal blocks, one per checkpoint."""
    checkpoints = _checkpoints(explainer)
    vectors = explainer.store.load()
    width = vectors.shape[1] // checkpoints
    scoring = explainer.index.meta.scoring
    tops = []
    for c in range(checkpoints):
        block = slice(c * width, (c + 1) * width)
        x, u = prepare(vectors[:, block], scoring), prepare(query[None, block], scoring)[0]
        tops.append(top_ids(x @ u, k))
    return tops


def seed_top(explainer: Explainer, text: Text, k: int, seed: int) -> list[int]:
    """The top-k supporters of ``text`` with the explainer's method built under projection ``seed``: every training
    vector computed again (in memory), the method finalized on them, the query vector through it, scored with the
    explainer's scoring. With the explainer's own seed this is its explanation's list."""
    built = build_method(explainer.workdir, explainer.index.meta.method, replace(explainer.settings, seed=seed))
    vectors = torch.from_numpy(compute_train_vectors(built.method, built.train))
    if hasattr(built.method, "finalize"):
        built.method.finalize(vectors)
    query = built.method.query_vectors([text]).vectors.numpy()
    scoring = explainer.index.meta.scoring
    return top_ids(prepare(vectors.numpy(), scoring) @ prepare(query, scoring)[0], k)


def _checkpoints(explainer: Explainer) -> int:
    """How many checkpoints the method's vectors have a block for (1 for a method of the last checkpoint)."""
    return len(explainer.workdir.load().checkpoints) if explainer.spec.checkpoints == "all" else 1


def stability(explainer: Explainer, other: Explainer | None, text: Text, k: int = 10) -> dict:
    """How robust the top-``k`` supporters of ``text`` are. Returns ``{"k", "supporting": [ids], "examples": [{"id",
    "checkpoints" (in how many checkpoints' top k; with "of"), "other_scoring" (in the other scoring's top k),
    "other_seed" (in the top k under a second projection seed)}], "overlap": {"checkpoints": mean pairwise Jaccard
    of the checkpoints' top k, "checkpoint_vs_sum": mean Jaccard of each checkpoint's top k with the
    explanation's, "scorings": Jaccard with the other scoring's top k, "seeds": Jaccard with the second seed's},
    "seed": what the seed check did}``; a part that does not apply (one checkpoint, no other scoring indexed, exact
    gradients) is None."""
    [explanation] = explainer.explain([text], top=k)
    supporting = [n.id for n in explanation.supporting]
    query = explainer.queries([text])[0].vectors[0].numpy()
    tops = checkpoint_tops(explainer, query, k) if _checkpoints(explainer) > 1 else None
    other_top = [n.id for n in other.explain([text], top=k)[0].supporting] if other is not None else None
    projector = getattr(explainer.method, "projector", None)  # none: features, not sketched gradients
    exact = projector is None or projector.exact
    second = explainer.settings.seed + 1
    seed_tops = None if exact else seed_top(explainer, text, k, second)
    examples = [{"id": i,
                 "checkpoints": None if tops is None else sum(i in t for t in tops),
                 "of": None if tops is None else len(tops),
                 "other_scoring": None if other_top is None else i in other_top,
                 "other_seed": None if seed_tops is None else i in seed_tops} for i in supporting]
    overlap = {
        "checkpoints": None if tops is None else round(float(np.mean([jaccard(a, b) for a, b in
                                                                     combinations(tops, 2)])), 4),
        "checkpoint_vs_sum": None if tops is None else round(float(np.mean([jaccard(t, supporting)
                                                                           for t in tops])), 4),
        "scorings": None if other_top is None else round(jaccard(supporting, other_top), 4),
        "seeds": None if seed_tops is None else round(jaccard(supporting, seed_tops), 4)}
    seed = "exact gradients: no projection, the seed does not enter" if exact else \
        f"{projector.kind} seed {explainer.settings.seed} against seed {second} (every training vector again)"
    return {"k": k, "scoring": explainer.index.meta.scoring,
            "other_scoring": None if other is None else other.index.meta.scoring,
            "supporting": supporting, "examples": examples, "overlap": overlap, "seed": seed}
