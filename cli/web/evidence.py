"""The explainer behind ``datablame serve``: loaded on first use, shared by every request under one lock.

It answers two questions, both as JSON-ready dicts:

- :meth:`Evidence.for_example`: why a flagged training example may be mislabeled: the model's probabilities for
  its text, its self-influence, and its nearest supporting and opposing training examples (itself left out), each
  with its own label, so that label conflicts show;
- :meth:`Evidence.explain`: the explain view's answer for one text, or for a list of texts as one aggregate.

The method is the one ``datablame explain`` uses without ``--method`` (:func:`default_method`), with the default
scoring. A workdir without an index gets a DatablameError naming the command that builds one; the next request
tries again, so an index built while the server runs is picked up.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from datablame.index.explain import Explainer, default_method
from datablame.index.search import DEFAULT_SCORING
from datablame.influence.data import Text

SIGN = ("Scores say how much training on an example moved the model towards the predicted label: > 0 supports "
        "the prediction, < 0 opposes it. {scoring}")
SCORING_NOTE = {"cosine": "Cosine scores (−1…1) compare directions, so examples of any gradient size rank fairly.",
                "raw": "Raw scores (inner products) also grow with an example's gradient size."}
log = logging.getLogger(__name__)


class Evidence:
    """The workdir's default explainer and the self-influence of its method, loaded once."""

    def __init__(self, workdir: str | Path, device: str = "auto"):
        self.workdir, self.device = Path(workdir), device
        self._explainer: Explainer | None = None
        self._self_influence: np.ndarray | None = None
        self._lock = threading.Lock()

    def warm(self) -> None:
        """Load the explainer in a background thread (a workdir without an index is left as it is)."""
        def load() -> None:
            with self._lock:
                try:
                    self._load()
                except Exception as exc:  # noqa: BLE001 - the request that needs it reports the problem
                    log.info("explainer not loaded in advance: %s", exc)

        threading.Thread(target=load, name="datablame-evidence", daemon=True).start()

    def _load(self) -> Explainer:
        if self._explainer is None:
            method, _ = default_method(self.workdir, DEFAULT_SCORING)
            explainer = Explainer(self.workdir, method, DEFAULT_SCORING, self.device)
            path = explainer.store.folder / "self_influence.npy"
            if explainer.store.current(explainer.key) is not None and path.is_file():
                self._self_influence = np.load(path, mmap_mode="r")
            self._explainer = explainer
        return self._explainer

    def _about(self, explainer: Explainer) -> dict:
        scoring = explainer.index.meta.scoring
        return {"method": explainer.index.meta.method, "scoring": scoring,
                "sign": SIGN.format(scoring=SCORING_NOTE.get(scoring, ""))}

    def for_example(self, text: Text, example_id: int, top: int = 5) -> dict:
        """probabilities {label: p} of the model for the example's text, self_influence (None when its vectors
        hold none), supporting and opposing: the ``top`` nearest training examples other than itself."""
        with self._lock:
            explainer = self._load()
            q, _ = explainer.queries([text])
            found = explainer.explain_queries([text], q, 0, 0.0, top + 1)[0]
            influence = None if self._self_influence is None else float(self._self_influence[example_id])
        probabilities = {name: round(float(p), 4) for name, p in zip(explainer.train.label_names, q.probabilities[0])}

        def others(rows) -> list[dict]:
            return [vars(n) for n in rows if n.id != example_id][:top]

        return {**self._about(explainer), "prediction": found.prediction, "probabilities": probabilities,
                "self_influence": influence, "supporting": others(found.supporting),
                "opposing": others(found.opposing)}

    def explain(self, texts: list[Text], aggregate: bool = False, top: int = 10) -> dict:
        """The explanation of ``texts[0]``, or with ``aggregate`` of all of them at once."""
        with self._lock:
            explainer = self._load()
            found = explainer.explain_aggregate(texts, top) if aggregate else explainer.explain(texts[:1], top)[0]
        return {**found.to_json(), **self._about(explainer)}
