"""Explain predictions: the training examples that most support and most oppose them, found in the index.

    index_workdir(workdir, "tracin")                 vectors (resumable) + one FAISS index per scoring
    Explainer(workdir, "tracin").explain(["text"])   [Explanation(prediction, supporting, opposing, timing)]
    Explainer(workdir, "tracin").explain_aggregate(texts)   one Explanation for the summed query vectors
    explain_batches([explainer], texts)              the same as explain, streamed a batch at a time

A query vector u_q comes from the method (:meth:`Method.query_vectors`) and is cached on disk under
``WORKDIR/cache/queries/`` (keyed by the index's key, the query-side settings and the text), so an influence
query pays for LiSSA once.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from datablame.influence.build import MethodSettings, build_method
from datablame.influence.data import Text
from datablame.influence.errors import DatablameError
from datablame.influence.lissa import Progress
from datablame.influence.methods import Queries
from datablame.influence.registry import DEFAULT_METHOD, method_names, method_spec
from datablame.influence.atomic import atomic_write_bytes
from datablame.influence.workdir import Workdir

from .search import DEFAULT_SCORING, RECALL_QUERIES, SCORINGS, IndexMeta, VectorIndex, approximate_kind
from .vectors import SHARD_SIZE, VectorSet, VectorStore, compute_vector_sets

QUERY_BATCH = 32
STREAM_BATCH = 256
"""Inputs per batch of :func:`explain_batches` (query vectors are computed ``QUERY_BATCH`` at a time within it)."""
log = logging.getLogger(__name__)


def show(text: Text) -> str:
    """An input as one line of text (a pair joined by ' || ')."""
    return text if isinstance(text, str) else " || ".join(text)


def index_workdir(workdir: str | Path, method: str, settings: MethodSettings = MethodSettings(),
                  scorings: Sequence[str] = SCORINGS, approximate: bool = False, dtype: str = "float32",
                  batch_size: int = 32, progress: Progress | None = None,
                  shard_size: int = SHARD_SIZE) -> list[IndexMeta]:
    """Compute the method's training vectors (missing shards only; each set of
    :func:`.vectors.vector_sets`, ``settings.at`` may be ``auto``) and build one index per scoring."""
    sets = compute_vector_sets(workdir, method, settings, dtype, batch_size, progress, shard_size, scorings=scorings)
    return [meta for s in sets for meta in build_indexes(workdir, method, s, s.scorings, approximate)]


def build_indexes(workdir: str | Path, method: str, vector_set: VectorSet, scorings: Sequence[str] = SCORINGS,
                  approximate: bool = False) -> list[IndexMeta]:
    """One index per scoring over a finished set of ``method``'s vectors (recording the settings they were
    computed with), saved under ``WORKDIR/index/``."""
    built, store, manifest = vector_set.built, vector_set.store, vector_set.manifest
    settings = MethodSettings.from_dict(manifest.settings)
    rows = store.rows(manifest)
    # IVF-PQ reads the shards as it goes; the in-memory kinds get them loaded once for every scoring
    vectors = rows if approximate and approximate_kind(manifest.n, manifest.dim) == "ivfpq" else np.asarray(rows)
    sample = recall_sample(built.method, vectors, settings.seed) if approximate and scorings else None
    metas = []
    for scoring in scorings:
        meta = IndexMeta(method=method, scoring=scoring, kind="exact", n=manifest.n, dim=manifest.dim,
                         key=built.key, settings=settings.to_dict())
        index = VectorIndex.build(vectors, meta, approximate, seed=settings.seed, queries=sample)
        detail = (f"; HNSW {index.meta.hnsw}" if index.meta.hnsw
                  else f"; IVF-PQ {index.meta.ivf}" if index.meta.ivf else "")
        log.info("%s %s index: %s, %d × %d%s", method, scoring, index.meta.kind, index.meta.n, index.meta.dim, detail)
        index.save(Workdir(workdir).index_dir)
        metas.append(index.meta)
    return metas


def recall_sample(method, vectors: np.ndarray, seed: int = 0, m: int = RECALL_QUERIES) -> np.ndarray | None:
    """(m, D) query-like vectors on which an approximate index's recall is measured, or None for the training
    vectors themselves. Influence queries are curvature-corrected, u = (VᵀV/n + λI)⁻¹ P g, which points them
    where training vectors are sparse and makes graph search harder than for training-like queries; so for a
    method with ``query_like`` (influence functions) the sample is m training vectors passed through it (its
    finalized curvature)."""
    if not hasattr(method, "query_like"):
        return None
    rows = np.random.default_rng(seed).choice(len(vectors), min(m, len(vectors)), replace=False)
    return method.query_like(torch.from_numpy(np.asarray(vectors[rows], dtype=np.float32))).numpy()


@dataclass
class Neighbour:
    """A training example in an explanation: id (0-based row), text, label name, score (raw inner product or
    cosine, per the explanation's scoring; > 0 supports the prediction, < 0 opposes it)."""

    id: int
    text: str
    label: str
    score: float


@dataclass
class Explanation:
    """method, scoring, text (one input, or the inputs of an aggregate), prediction {label, probability}
    (an aggregate: the most frequent predicted label, its mean probability and the counts per label), the
    supporting and opposing training examples, best first, and timing in seconds."""

    method: str
    scoring: str
    text: str | list[str]
    prediction: dict
    supporting: list[Neighbour]
    opposing: list[Neighbour]
    timing: dict = field(default_factory=dict)
    verification: dict | None = None  # from --verify: see .verify.Verification
    stability: dict | None = None  # from --stability: see .stability.stability

    def to_json(self) -> dict:
        """The fields as JSON; verification and stability only when they were computed."""
        return {k: v for k, v in asdict(self).items() if v is not None or k not in ("verification", "stability")}


class QueryCache:
    """Query vectors on disk, one ``.npz`` per (context, text): the vector (D,), probabilities (K,), prediction."""

    def __init__(self, folder: Path, context: str):
        self.folder = folder
        self.context = context

    def path(self, text: Text) -> Path:
        digest = hashlib.sha256((self.context + "\0" + json.dumps(text)).encode()).hexdigest()
        return self.folder / f"{digest[:32]}.npz"

    def get(self, text: Text) -> tuple[np.ndarray, np.ndarray, int] | None:
        path = self.path(text)
        if not path.is_file():
            return None
        with np.load(path) as z:
            return z["vector"], z["probabilities"], int(z["prediction"])

    def put(self, text: Text, vector: np.ndarray, probabilities: np.ndarray, prediction: int) -> None:
        buf = io.BytesIO()
        np.savez(buf, vector=vector, probabilities=probabilities, prediction=np.int64(prediction))
        atomic_write_bytes(self.path(text), buf.getvalue())


def default_method(workdir: str | Path, scoring: str) -> tuple[str, str]:
    """The method ``explain`` uses when none is named, and why when it is not the default: the default method
    (:data:`.registry.DEFAULT_METHOD`) when it is indexed with ``scoring``, else the first registered one that
    is; the default when none is (its error then names the command that builds the index)."""
    folder = Workdir(workdir).index_dir
    indexed = [m for m in method_names() if VectorIndex.paths(folder, m, scoring)[1].is_file()]
    if DEFAULT_METHOD in indexed or not indexed:
        return DEFAULT_METHOD, ""
    return indexed[0], f"{DEFAULT_METHOD} is not indexed"


class Explainer:
    """One method's index and query side, loaded once; refuses an index that no longer matches the workdir.

    ``curvature`` and ``damping`` (influence only) override the recorded query side: ``auto``, ``lissa``,
    ``sketch`` or ``exact``, and the λ added to it (a number, or ``auto``).
    """

    def __init__(self, workdir: str | Path, method: str = "tracin", scoring: str = DEFAULT_SCORING,
                 device: str = "auto", curvature: str | None = None, cache: bool = True,
                 damping: float | str | None = None):
        self.workdir = Workdir(workdir)
        self.workdir.load()  # a folder that is no workdir is refused as such, not for lacking an index
        self._options = {"device": device, "curvature": curvature, "cache": cache, "damping": damping}
        self.index = VectorIndex.load(self.workdir.index_dir, method, scoring, lambda meta: self._store(meta).rows())
        settings = MethodSettings.from_dict(self.index.meta.settings, device)
        if curvature is not None:
            settings.curvature = curvature
        if damping is not None:  # "auto": the curvature's mean eigenvalue
            settings.lissa = replace(settings.lissa, damping=None if damping == "auto" else damping)
        built = build_method(self.workdir, method, settings, fit=False)
        self.index.check_fresh(built.key)
        self.method, self.train, self.settings, self.key = built.method, built.train, settings, built.key
        self.spec = method_spec(method)
        self.store = self._store(self.index.meta)
        finalized = self.store.finalized(built.key)
        if finalized:
            self.method.use_finalized(finalized)
        query_side = asdict(settings.query) if self.spec.query is not None else {}
        # what the query vectors depend on, as JSON: explainers of equal contexts share them (see explain_batches)
        self.context = json.dumps({"key": built.key, **query_side}, sort_keys=True)
        self.cache = QueryCache(self.workdir.queries_cache(method), self.context) if cache else None

    def _store(self, meta: IndexMeta) -> VectorStore:
        """The stored vectors an index of ``meta`` was built from (at its recorded point)."""
        return VectorStore(self.workdir.vectors_dir(meta.method, meta.settings.get("at", "checkpoint")))

    def with_scoring(self, scoring: str) -> "Explainer":
        """The explainer over the index of another scoring: the same one (model, query side, query cache) over
        that index when it was built from the same vectors, else one of its own (influence functions' two vector
        sets, see :func:`.vectors.vector_sets`), with the same options."""
        method = self.index.meta.method
        index = VectorIndex.load(self.workdir.index_dir, method, scoring, lambda meta: self._store(meta).rows())
        if self._store(index.meta).folder != self.store.folder:
            return Explainer(self.workdir.root, method, scoring, **self._options)
        other = copy.copy(self)
        other.index = index
        other.index.check_fresh(self.key)
        return other

    def overlong(self, texts: Sequence[Text]) -> dict[int, int]:
        """{position: token count} of the inputs longer than the workdir's max_length (``self.max_length``), which
        the model sees truncated to their first max_length tokens. One tokenizer pass without truncation: cheap
        next to a query vector."""
        if not texts:
            return {}
        tokenizer = self.method.task.tokenizer  # verbose=False: no warning of its own about long sequences
        pairs = isinstance(texts[0], tuple)
        encoded = tokenizer([t[0] for t in texts], [t[1] for t in texts], verbose=False) if pairs else \
            tokenizer(list(texts), verbose=False)
        return {i: len(ids) for i, ids in enumerate(encoded["input_ids"]) if len(ids) > self.max_length}

    @property
    def max_length(self) -> int:
        """Tokens per input the model sees (the workdir's max_length); longer inputs are truncated."""
        return self.method.task.max_length

    @property
    def cost_note(self) -> str:
        """What a query vector costs, for the timing line."""
        return self.spec.cost(self.method)

    def queries(self, texts: Sequence[Text], progress: Progress | None = None) -> tuple[Queries, int]:
        """Query vectors of the texts (cached ones read from disk) and how many came from the cache;
        ``progress(done, total)`` counts the texts. The missing ones are computed ``QUERY_BATCH`` at a time in
        order of length, so that a batch pads its inputs little (results stay in input order)."""
        rows: list = [self.cache.get(t) if self.cache else None for t in texts]
        missing = sorted((i for i, row in enumerate(rows) if row is None), key=lambda i: len(show(texts[i])))
        log.info("%d queries: %d cached, %d to compute (%s)", len(texts), len(texts) - len(missing), len(missing),
                 self.cost_note)
        for lo in range(0, len(missing), QUERY_BATCH):
            if progress is not None:
                progress(len(texts) - len(missing) + lo, len(texts))
            ids = missing[lo:lo + QUERY_BATCH]
            q = self.method.query_vectors([texts[i] for i in ids])
            for j, i in enumerate(ids):
                rows[i] = (q.vectors[j].numpy(), q.probabilities[j].numpy(), int(q.predictions[j]))
                if self.cache:
                    self.cache.put(texts[i], *rows[i])
        if progress is not None:
            progress(len(texts), len(texts))
        if not texts:
            return Queries(torch.zeros(0, self.index.meta.dim), torch.zeros(0, dtype=torch.long),
                           torch.zeros(0, self.train.num_labels)), 0
        return Queries(torch.from_numpy(np.stack([r[0] for r in rows]).astype(np.float32)),
                       torch.tensor([r[2] for r in rows]),
                       torch.from_numpy(np.stack([r[1] for r in rows]))), len(texts) - len(missing)

    def _neighbours(self, vectors: np.ndarray, top: int) -> tuple[list[list[Neighbour]], list[list[Neighbour]]]:
        """Supporting (largest scores) and opposing (most negative) lists per (b, D) query, from one search."""
        s_scores, s_ids, o_scores, o_ids = self.index.search_both(vectors, top)
        return ([self._rows(s, i) for s, i in zip(s_scores, s_ids)],
                [self._rows(s, i) for s, i in zip(o_scores, o_ids)])

    def _rows(self, scores: np.ndarray, ids: np.ndarray) -> list[Neighbour]:
        names = self.train.label_names
        return [Neighbour(int(i), show(self.train.texts[i]), names[int(self.train.labels[i])], float(s))
                for s, i in zip(scores, ids) if i >= 0]

    def _timing(self, query_s: float, search_s: float, cached: int, n: int) -> dict:
        return {"query_vectors_s": round(query_s, 4), "search_s": round(search_s, 4), "cached": cached,
                "queries": n, "index": self.index.meta.kind, "cost": self.cost_note}

    def explain(self, texts: Sequence[Text], top: int = 10, progress: Progress | None = None) -> list[Explanation]:
        """One explanation per input: its prediction and the ``top`` most supporting and opposing examples."""
        start = time.perf_counter()
        q, cached = self.queries(texts, progress)
        return self.explain_queries(texts, q, cached, time.perf_counter() - start, top)

    def explain_queries(self, texts: Sequence[Text], q: Queries, cached: int, query_s: float,
                        top: int = 10) -> list[Explanation]:
        """The explanations of inputs whose query vectors ``q`` (one row per text) are computed already, in
        ``query_s`` seconds of which ``cached`` came from the cache: one search of this explainer's index."""
        start = time.perf_counter()
        supporting, opposing = self._neighbours(q.vectors.numpy(), top)
        search_s = time.perf_counter() - start
        names = self.train.label_names
        return [Explanation(self.index.meta.method, self.index.meta.scoring, show(t),
                            {"label": names[int(q.predictions[i])],
                             "probability": float(q.probabilities[i, q.predictions[i]])},
                            supporting[i], opposing[i],
                            self._timing(query_s / len(texts), search_s / len(texts), cached, 1))
                for i, t in enumerate(texts)]

    def explain_aggregate(self, texts: Sequence[Text], top: int = 10, progress: Progress | None = None) -> Explanation:
        """The training examples that most support or oppose the model's behaviour on the whole set: one search
        with the sum of the query vectors (unit query vectors for cosine scoring, so each input counts once)."""
        if not texts:
            raise DatablameError("no inputs to aggregate", "give a --queries file with one input per line")
        start = time.perf_counter()
        q, cached = self.queries(texts, progress)
        query_s = time.perf_counter() - start
        v = q.vectors.numpy()
        if self.index.meta.scoring == "cosine":
            v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-30)
        start = time.perf_counter()
        supporting, opposing = self._neighbours(v.sum(0, keepdims=True), top)
        search_s = time.perf_counter() - start
        names = self.train.label_names
        counts = Counter(int(p) for p in q.predictions)
        label = counts.most_common(1)[0][0]
        chosen = q.predictions == label
        prediction = {"label": names[label], "probability": float(q.probabilities[chosen, label].mean()),
                      "counts": {names[k]: c for k, c in sorted(counts.items())}}
        return Explanation(self.index.meta.method, self.index.meta.scoring, [show(t) for t in texts], prediction,
                           supporting[0], opposing[0], self._timing(query_s, search_s, cached, len(texts)))


def explain_batches(explainers: Sequence[Explainer], texts: Sequence[Text], top: int = 10,
                    progress: Progress | None = None, batch: int = STREAM_BATCH) -> Iterator[tuple[Explanation, ...]]:
    """Explanations in input order, ``batch`` inputs at a time, each yielded as soon as its batch is searched: per
    input, one :class:`Explanation` per explainer. Query vectors are computed once per distinct query side
    (explainers of equal ``context``, such as ``with_scoring`` copies, share them); memory holds one batch, not
    the whole run. ``progress(done, total)`` counts the inputs (of the first query side)."""
    for lo in range(0, len(texts), batch):
        chunk = texts[lo:lo + batch]
        computed: dict[str, tuple[Queries, int, float]] = {}
        for e in explainers:
            if e.context not in computed:
                start = time.perf_counter()
                report = None if progress is None or computed else \
                    lambda done, _total, lo=lo: progress(lo + done, len(texts))
                q, cached = e.queries(chunk, report)
                computed[e.context] = (q, cached, time.perf_counter() - start)
        yield from zip(*(e.explain_queries(chunk, *computed[e.context], top) for e in explainers))


@dataclass
class Tally:
    """A batch's explanations summed up: how many inputs each training example is among the supporting (and the
    opposing) ``top`` of; what a one-figure summary of a batch shows. Memory: one entry per distinct example."""

    method: str
    scoring: str
    inputs: int = 0
    supporting: Counter = field(default_factory=Counter)
    opposing: Counter = field(default_factory=Counter)
    examples: dict[int, Neighbour] = field(default_factory=dict)
    digest: "hashlib._Hash" = field(default_factory=hashlib.sha256)

    def add(self, explanation: Explanation) -> None:
        """Count one input's explanation (its text goes into :attr:`digest`, which names the batch)."""
        self.inputs += 1
        self.digest.update(json.dumps(explanation.text, ensure_ascii=False).encode() + b"\n")
        for counter, rows in ((self.supporting, explanation.supporting), (self.opposing, explanation.opposing)):
            for n in rows:
                counter[n.id] += 1
                self.examples.setdefault(n.id, n)
