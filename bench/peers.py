"""Peer libraries on faithfulness.py's tasks (issue 17): Kronfluence, dattri and Captum attribution scores.

Beyond a head (faithfulness.py's non-convex setting, ``--train-params last-layer --peers``): ``text_peer_scores``
runs the peers that take a whole model on token tensors, Kronfluence's (E)K-FAC (its linear layers among the
fine-tuned parameters) and dattri's TRAK (all of them), each with the configurations and dampings below.

``peer_scores`` scores every training example for every test point with each peer configuration that can run
(a library that is not installed is skipped with a note on stderr), on the task of bench/faithfulness.py: frozen
all-MiniLM-L6-v2 features, the trained linear head (h → K), each test point attributed for the label ŷ the full
model predicts. Install the peers with ``pip install -e '.[peers]'`` (benchmark only; see pyproject.toml).

Sign convention (datablame's): score > 0 means training example i SUPPORTS the test prediction: removing it
would lower the test margin m_q = log p_ŷ − log(1 − p_ŷ) (raise the test loss). Per library:

- Kronfluence returns ∇f_qᵀ(G + λI)⁻¹∇L_i with G its (E)K-FAC Fisher of the mean training loss; upweighting
  i by ε moves f_q by −ε·score. Its measurement here is f_q = −m_q, so score > 0 ⇔ upweighting i raises the
  margin: kept as is.
- dattri's influence functions return g_iᵀ(H + λI)⁻¹g_q with g the gradients of the cross-entropy, the test's
  at ŷ (so score > 0 ⇔ removing i raises the test loss): kept as is. dattri's TRAK takes the margin as its
  output function on both sides (score > 0 ⇔ i raises the margin), its TracIn and Captum's TracInCP* the dot
  products of loss gradients weighted by the learning rates (> 0: proponent), RPS α_i[ŷ]·⟨x_i, x_q⟩ (> 0:
  i pushes the logit of ŷ up): all kept as is. Each is checked against exact influence (``main``).

Configurations (name: what is run):

- ``kronfluence-ekfac``, ``kronfluence-kfac``: ``FactorArguments(strategy=...)`` (true Fisher, labels sampled
  from the head), ``ScoreArguments()`` (its default damping 1e-8); ``-dheuristic``: ``damping_factor=None``,
  Kronfluence's heuristic 0.1 × the mean eigenvalue (``damping_value`` in the row's settings).
- ``dattri-if-explicit-d0.01``, ``dattri-if-cg-d0.01`` (``max_iter`` 10, its default), ``dattri-if-lissa-d0.01``
  (depth 5000, minibatch 32, scale = trace of the Hessian + λ, an upper bound of its top eigenvalue; dattri's
  LiSSA damping d solves (H + d·scale·I)⁻¹, so d = λ/scale): the Hessian of the mean training cross-entropy
  over the head's parameters + λI, λ = 0.01 (``regularization``; dattri's default 0 is singular for a softmax
  head: adding one vector to every class's row changes nothing).
- ``dattri-trak-512``: ``TRAKAttributor`` at the final head, projection 512, ``regularization`` 0.01.
- ``dattri-tracin``: ``TracInAttributor`` over the checkpoints weighted by their learning rates, gradients not
  projected (projection off: the head has few parameters), not normalised.
- ``dattri-rps``: ``RPSAttributor`` (representer points; its defaults: l2 0.003, 3000 epochs of its own refit).
- ``captum-tracincp``, ``captum-tracincp-fast``, ``captum-tracincp-fast-randproj-256`` over the checkpoints
  (Captum reads the learning rate from ``checkpoints_load_func``). ``TracInCPFast*`` use the final layer's
  weight only (no bias). ``TracInCPFastRandProj`` needs a nearest-neighbour index even in score mode; its
  default, Annoy, is not installed, so a brute-force one is passed (only used for top-k queries, not here).

``seconds``: wall time from the library's first call to the (T, n) scores (factors, caches and scores);
Kronfluence fits its factors once per strategy, counted in the first configuration's seconds and reused by
``-dheuristic`` (``factor_seconds`` in the settings). ``peak_mb``: the process's peak resident memory
above its level at the start, sampled every 10 ms.

    PYTHONPATH=/tmp/minilm OMP_NUM_THREADS=1 python bench/peers.py --quick [--only 'kronfluence-*' ...]

``main`` builds faithfulness.py's task with its functions (same seeds, so the same subsets and margins as
``faithfulness.py`` with the same options) and prints JSON: each peer's LDS and bootstrap interval beside
datablame's ``influence-auto-exact-dauto``, and the sign check (``"sign_check"``): each peer's scores against
the exact influence of faithfulness.py's ``exact_influence`` at λ auto, and for the peers with a damping at
their own λ: Spearman and Pearson correlation over all (test, train) pairs, the mean per-test Spearman
correlation and the relative error. A peer that differentiates the margin (Kronfluence, TRAK) is compared
with exact influence times 1/(1 − p_ŷ) (two classes: ∇(−margin) = ∇CE(ŷ)/(1 − p_ŷ)). A negative correlation
would be a sign error. ``"kronfluence_ekfac_damping_sweep"``: EK-FAC at dampings 1e-8 … 0.1 (float32, its
defaults, and float64) against exact influence at the same damping, with its LDS.

Within ``faithfulness.py --peers`` dattri's progress bars go to stderr unless TQDM_DISABLE=1 is set.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib.metadata
import json
import os
import pathlib
import sys
import tempfile
import threading
import time
from typing import Callable

os.environ.setdefault("TQDM_DISABLE", "1")  # dattri's progress bars; read when tqdm is first imported (by torch)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from datablame.influence.trak import margin  # noqa: E402  (the margin faithfulness.py's LDS reads)

DAMPING = 0.01  # λ of dattri's influence functions and TRAK's regularization
TRAK_DIM = 512
RANDPROJ_DIM = 256


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] peers: {message}", file=sys.stderr, flush=True)


class HeadModel(nn.Module):
    """The linear head as a model on features: what every peer attributes (its ``linear`` is the tracked /
    final layer)."""

    def __init__(self, head: nn.Linear):
        super().__init__()
        self.linear = copy.deepcopy(head).float()
        for p in self.linear.parameters():
            p.requires_grad_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class PeakRSS:
    """Peak resident memory (MB) of the process above its level when entered, sampled every 10 ms."""

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _watch(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = self._rss()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def mb(self) -> float:
        return round((self.peak - self.start) / 2**20, 1)


def version(library: str) -> str | None:
    try:
        return importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------------------------------- Kronfluence
def kronfluence_configs(data: dict, strategies: tuple[str, ...] = ("ekfac", "kfac"),
                        dampings: list[tuple[float | None, str]] | None = None, double: bool = False
                        ) -> list[tuple[str, dict, Callable[[], np.ndarray]]]:
    """``dampings``: (damping_factor, name suffix) pairs, by default Kronfluence's default and its heuristic
    (None); ``double``: every Kronfluence dtype float64 (a check of its float32 defaults). ``data`` without a
    ``"model"``: the head on features; with one (:func:`text_peer_scores`): that model on token tensors, its
    ``"tracked"`` modules attributed."""
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    class ClassifierTask(Task):
        """A batch is the model's input tensors, then the label."""

        def compute_train_loss(self, batch, model, sample=False):
            *inputs, y = batch
            logits = model(*inputs)
            if sample:  # the true Fisher: labels drawn from the model's own predictions
                with torch.no_grad():
                    y = torch.multinomial(torch.softmax(logits.detach(), -1), 1).flatten()
            return F.cross_entropy(logits, y, reduction="sum")

        def compute_measurement(self, batch, model):
            *inputs, y = batch  # y: the label the full model predicts
            return -margin(model(*inputs), y).sum()  # f = −margin: Kronfluence's score > 0 then means "supports"

        def get_influence_tracked_modules(self):
            return data.get("tracked")

    if "model" in data:
        train_set, query_set = data["train_set"], data["query_set"]
    else:
        train_set = TensorDataset(data["x"], data["y"])
        query_set = TensorDataset(data["xq"], data["yq"])
    batch = data.get("batch_size", 256)
    state: dict = {}
    f64 = torch.float64
    factor_dtypes = {k: f64 for k in ("activation_covariance_dtype", "gradient_covariance_dtype",
                                      "per_sample_gradient_dtype", "lambda_dtype")} if double else {}
    score_dtypes = ({k: f64 for k in ("per_sample_gradient_dtype", "precondition_dtype", "score_dtype")}
                    if double else {})

    def analyzer():
        if "analyzer" not in state:
            state["dir"] = tempfile.TemporaryDirectory(prefix="kronfluence-")
            task = ClassifierTask()
            model = prepare_model(data["model"] if "model" in data else HeadModel(data["head"]), task)
            state["analyzer"] = Analyzer("head", model, task, cpu=True, disable_tqdm=True, output_dir=state["dir"].name)
        return state["analyzer"]

    def factors(strategy: str) -> float:
        """Fits the strategy's factors once (seconds, 0 when already fitted)."""
        if strategy in state:
            return 0.0
        start = time.perf_counter()
        torch.manual_seed(data["seed"])
        analyzer().fit_all_factors(strategy, train_set, per_device_batch_size=batch,
                                   factor_args=FactorArguments(strategy=strategy, **factor_dtypes),
                                   overwrite_output_dir=True)
        state[strategy] = time.perf_counter() - start
        return state[strategy]

    def heuristic_damping(strategy: str) -> list[float]:
        """0.1 × the mean eigenvalue, as Kronfluence's ``damping_factor=None`` takes it: one per tracked module."""
        loaded = analyzer().load_all_factors(strategy)
        out = []
        for module in (loaded["lambda_matrix"] if strategy == "ekfac" else loaded["activation_eigenvalues"]):
            if strategy == "ekfac":
                lam = loaded["lambda_matrix"][module].double() / loaded["num_lambda_processed"][module].double()
            else:
                a = loaded["activation_eigenvalues"][module].double()
                g = loaded["gradient_eigenvalues"][module].double()
                lam = torch.kron(a[None], g[:, None])
            out.append(float(0.1 * lam.mean()))
        return out

    def scorer(strategy: str, damping: float | None, settings: dict) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            settings["factors_reused"] = factors(strategy) == 0.0
            name = f"{strategy}-{damping}"
            analyzer().compute_pairwise_scores(
                name, strategy, query_set, train_set, per_device_query_batch_size=len(query_set),
                per_device_train_batch_size=batch, score_args=ScoreArguments(damping_factor=damping, **score_dtypes),
                overwrite_output_dir=True)
            scores = analyzer().load_pairwise_scores(name)
            values = [damping] if damping is not None else heuristic_damping(strategy)
            settings["damping_value"] = values[0] if len(values) == 1 else values
            settings["factor_seconds"] = round(state[strategy], 2)
            return scores["all_modules"].double().numpy()
        return run

    out = []
    for strategy in strategies:
        for damping, suffix in dampings or ((ScoreArguments().damping_factor, ""), (None, "-dheuristic")):
            settings = {"strategy": strategy, "damping_factor": damping, "use_empirical_fisher": False,
                        "test_function": "-margin(ŷ)", "train_loss": "cross-entropy, sum",
                        "dtypes": "float64" if double else "defaults (float32)"}
            out.append((f"kronfluence-{strategy}{suffix}", settings, scorer(strategy, damping, settings)))
    return out


# ------------------------------------------------------------------------------------------------------- dattri
def dattri_text_configs(data: dict) -> list[tuple[str, dict, Callable[[], np.ndarray]]]:
    """dattri's TRAK beyond a head (:func:`text_peer_scores`): the margin's gradients over the selected parameters
    (``data["params"]``, named in the :class:`TextModel`), projected to :data:`TRAK_DIM`, λ 0.01, at the final
    checkpoint. (Its explicit and CG influence functions need the Hessian of 1.8M parameters: not run.)"""
    from dattri.algorithm.trak import TRAKAttributor
    from dattri.task import AttributionTask

    model = data["model"]
    for name, p in model.named_parameters():  # dattri differentiates the parameters that require a gradient
        p.requires_grad_(name in data["params"])
    final = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def call(params, tensors):  # per-example calls come without the batch dimension (vmap over dim 0)
        *inputs, labels = [t[None] for t in tensors] if tensors[0].dim() == 1 else tensors
        return torch.func.functional_call(model, params, tuple(inputs)), labels.long()

    def margin_f(params, tensors):
        logits, labels = call(params, tensors)
        return margin(logits, labels).sum()

    def correct_probability(params, tensors):
        logits, labels = call(params, tensors)
        return torch.exp(-F.cross_entropy(logits, labels))

    def trak() -> np.ndarray:
        task = AttributionTask(loss_func=margin_f, model=model, checkpoints=final,
                               checkpoints_load_func=lambda m, _checkpoint: m)  # the model is at the checkpoint
        attributor = TRAKAttributor(task=task, correct_probability_func=correct_probability, device="cpu",
                                    projector_kwargs={"proj_dim": TRAK_DIM, "proj_seed": data["seed"],
                                                      "device": "cpu"}, regularization=DAMPING)
        attributor.cache(DataLoader(data["train_set"], batch_size=16))
        return attributor.attribute(DataLoader(data["query_set"], batch_size=16)).T.detach().double().numpy()

    return [(f"dattri-trak-{TRAK_DIM}", {"proj_dim": TRAK_DIM, "regularization": DAMPING, "test_function": "margin(ŷ)",
                                        "checkpoints": 1, "params": len(final)}, trak)]


def dattri_configs(data: dict) -> list[tuple[str, dict, Callable[[], np.ndarray]]]:
    from dattri.algorithm.influence_function import IFAttributorCG, IFAttributorExplicit, IFAttributorLiSSA
    from dattri.algorithm.rps import RPSAttributor
    from dattri.algorithm.tracin import TracInAttributor
    from dattri.algorithm.trak import TRAKAttributor
    from dattri.task import AttributionTask

    model = HeadModel(data["head"])
    final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x, y, xq, yq = data["x"], data["y"], data["xq"], data["yq"]
    n, t = len(x), len(xq)

    def batch(features, labels):  # per-example calls come without the batch dimension (vmap over dim 0)
        labels = labels.long()
        return (features[None], labels[None]) if features.dim() == 1 else (features, labels)

    def ce(params, pair):
        features, labels = batch(*pair)
        return F.cross_entropy(torch.func.functional_call(model, params, (features,)), labels)

    def margin_f(params, pair):
        features, labels = batch(*pair)
        return margin(torch.func.functional_call(model, params, (features,)), labels).sum()

    def correct_probability(params, pair):
        features, labels = batch(*pair)
        return torch.exp(-F.cross_entropy(torch.func.functional_call(model, params, (features,)), labels))

    def loader(features, labels, size):
        return DataLoader(TensorDataset(features, labels), batch_size=size, shuffle=False)

    def influence(cls, **kwargs) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            task = AttributionTask(loss_func=ce, model=model, checkpoints=final)
            attributor = cls(task=task, device="cpu", **kwargs)
            attributor.cache(loader(x, y, n))  # one batch: the Hessian of the mean loss over all of them
            return attributor.attribute(loader(x, y, n), loader(xq, yq, t)).T.detach().double().numpy()
        return run

    def lissa_scale() -> float:
        """trace(H) + λ, H the Hessian of the mean cross-entropy: an upper bound of its top eigenvalue."""
        with torch.no_grad():
            p = torch.softmax(model(x).double(), -1)
            return float(((p * (1 - p)).sum(-1) * (x.double().pow(2).sum(-1) + 1)).mean()) + DAMPING

    def lissa() -> np.ndarray:
        scale = lissa_scale()
        lissa_settings["scaling"] = round(scale, 4)
        torch.manual_seed(data["seed"])
        return influence(IFAttributorLiSSA, batch_size=32, num_repeat=1, recursion_depth=5000,
                         damping=DAMPING / scale, scaling=scale)()

    def trak() -> np.ndarray:
        task = AttributionTask(loss_func=margin_f, model=model, checkpoints=final)
        attributor = TRAKAttributor(task=task, correct_probability_func=correct_probability, device="cpu",
                                    projector_kwargs={"proj_dim": TRAK_DIM, "proj_seed": data["seed"],
                                                      "device": "cpu"}, regularization=DAMPING)
        attributor.cache(loader(x, y, 256))
        return attributor.attribute(loader(xq, yq, t)).T.detach().double().numpy()

    def tracin() -> np.ndarray:
        task = AttributionTask(loss_func=ce, model=model,
                               checkpoints=[{"linear." + k: v for k, v in h.state_dict().items()}
                                            for h, _ in data["checkpoints"]])
        attributor = TracInAttributor(task=task, weight_list=torch.tensor([lr for _, lr in data["checkpoints"]]),
                                      normalized_grad=False, device="cpu")
        attributor.projector_kwargs = None  # TracInAttributor projects whenever this is set: exact gradients
        return attributor.attribute(loader(x, y, 256), loader(xq, yq, t)).T.detach().double().numpy()

    def rps() -> np.ndarray:
        task = AttributionTask(loss_func=ce, model=model, checkpoints=final,
                               target_func=lambda logits, soft: F.cross_entropy(logits, soft))
        attributor = RPSAttributor(task=task, final_linear_layer_name="linear", device="cpu")
        attributor.cache(loader(x, y, 256))
        return attributor.attribute(loader(x, y, 256), loader(xq, yq, t)).T.detach().double().numpy()

    def no_grad(run: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
        """dattri differentiates with torch.func transforms, which ignore an outer no_grad; without it every
        LiSSA step would hang on to the autograd graph of the head's parameters (gigabytes)."""
        def wrapped() -> np.ndarray:
            with torch.no_grad():
                return run()
        return wrapped

    lissa_settings = {"regularization": DAMPING, "recursion_depth": 5000, "batch_size": 32, "num_repeat": 1,
                      "test_function": "cross-entropy(ŷ)"}
    out = [("dattri-if-explicit-d0.01", {"regularization": DAMPING, "test_function": "cross-entropy(ŷ)"},
            influence(IFAttributorExplicit, regularization=DAMPING)),
           ("dattri-if-cg-d0.01", {"regularization": DAMPING, "max_iter": 10, "test_function": "cross-entropy(ŷ)"},
            influence(IFAttributorCG, regularization=DAMPING)),
           ("dattri-if-lissa-d0.01", lissa_settings, lissa),
           (f"dattri-trak-{TRAK_DIM}", {"proj_dim": TRAK_DIM, "regularization": DAMPING, "test_function": "margin(ŷ)",
                                       "checkpoints": 1}, trak)]
    if data["checkpoints"]:
        out.append(("dattri-tracin", {"checkpoints": len(data["checkpoints"]), "weights": "learning rates",
                                      "test_function": "cross-entropy(ŷ)",
                                      "projection": None, "normalized_grad": False}, tracin))
    out.append(("dattri-rps", {"l2_strength": 0.003, "epoch": 3000, "test_function": "alpha(ŷ)"}, rps))
    return [(name, config_settings, run if name == "dattri-rps" else no_grad(run))
            for name, config_settings, run in out]


# ------------------------------------------------------------------------------------------------------- Captum
def captum_configs(data: dict) -> list[tuple[str, dict, Callable[[], np.ndarray]]]:
    from captum.influence import TracInCP, TracInCPFast, TracInCPFastRandProj
    from captum.influence._utils.nearest_neighbors import NearestNeighbors

    if not data["checkpoints"]:
        log("captum: no checkpoints given, TracInCP* skipped")
        return []

    class BruteForce(NearestNeighbors):
        """Largest dot products by one matrix product (TracInCPFastRandProj's default needs Annoy)."""

        def setup(self, stored: torch.Tensor) -> None:
            self.stored = stored.reshape(len(stored), -1)

        def get_nearest_neighbors(self, query: torch.Tensor, k: int):
            values, indices = torch.topk(query.reshape(len(query), -1) @ self.stored.T, k, dim=1)
            return indices, values

    checkpoints = [{"state": {"linear." + k: v for k, v in h.state_dict().items()}, "lr": lr}
                   for h, lr in data["checkpoints"]]

    def load(model: nn.Module, checkpoint: dict) -> float:
        model.load_state_dict(checkpoint["state"])
        return checkpoint["lr"]

    train_set = TensorDataset(data["x"], data["y"])
    loss = {"test_function": "cross-entropy(ŷ)"}
    common = {"train_dataset": train_set, "checkpoints": checkpoints, "checkpoints_load_func": load,
              "loss_fn": nn.CrossEntropyLoss(reduction="sum"), "batch_size": 256}

    def scorer(make: Callable[[nn.Module], object]) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            return make(HeadModel(data["head"])).influence((data["xq"], data["yq"]), k=None).detach().double().numpy()
        return run

    return [("captum-tracincp", {"checkpoints": len(checkpoints), "sample_wise_grads_per_batch": True, **loss},
             scorer(lambda m: TracInCP(m, sample_wise_grads_per_batch=True, **common))),
            ("captum-tracincp-fast", {"checkpoints": len(checkpoints), "final_fc_layer": "weight only", **loss},
             scorer(lambda m: TracInCPFast(m, m.linear, **common))),
            (f"captum-tracincp-fast-randproj-{RANDPROJ_DIM}",
             {"checkpoints": len(checkpoints), "projection_dim": RANDPROJ_DIM, "seed": data["seed"], **loss},
             scorer(lambda m: TracInCPFastRandProj(m, m.linear, nearest_neighbors=BruteForce(),
                                                   projection_dim=RANDPROJ_DIM, seed=data["seed"], **common)))]


LIBRARIES = {"kronfluence": kronfluence_configs, "dattri": dattri_configs, "captum": captum_configs}


def peer_scores(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test_pred: torch.Tensor,
                head: nn.Linear, settings=None, checkpoints: list[tuple[nn.Linear, float]] | None = None,
                only: list[str] | None = None, seed: int = 0) -> list[dict]:
    """Each installed peer configuration's (T, n) float64 scores, datablame's sign (> 0: training example i
    supports test point q's predicted label ``y_test_pred[q]``), with ``config``, ``library``, ``version``,
    ``seconds``, ``peak_mb`` and ``settings``. ``head``: the trained linear head on the features ``x_*``;
    ``settings``: the training recipe (recorded); ``checkpoints``: (head, learning rate) per checkpoint, for
    the TracIn peers (skipped without); ``only``: shell patterns of configuration names to run."""
    data = {"x": x_train.detach().float().cpu(), "y": torch.as_tensor(y_train).long().cpu(),
            "xq": x_test.detach().float().cpu(), "yq": torch.as_tensor(y_test_pred).long().cpu(),
            "head": copy.deepcopy(head).float().cpu(), "seed": seed,
            "checkpoints": [(copy.deepcopy(h).float().cpu(), float(lr)) for h, lr in (checkpoints or [])]}
    return run_configs(LIBRARIES, data, (len(data["xq"]), len(data["x"])), settings, only)


class TextModel(nn.Module):
    """A sequence classifier as a model of token tensors (input_ids, the additive attention mask[, token type
    ids]): what the peers attribute beyond a head. ``task`` is datablame's adapter (pooling included). The model
    itself, not a copy (a mean-pooling model's forward is bound to it), which Kronfluence then modifies: pass one
    loaded for the purpose."""

    def __init__(self, model: nn.Module, task):
        super().__init__()
        self.model = model.float().eval()
        self.task = task

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if rest:
            batch["token_type_ids"] = rest[0]
        return self.task.logits(self.model, batch)


def text_peer_scores(model: nn.Module, task, names: list[str], train_texts: list, y_train, test_texts: list,
                     y_test_pred: torch.Tensor, settings=None, only: list[str] | None = None,
                     seed: int = 0) -> list[dict]:
    """:func:`peer_scores` beyond a head (faithfulness.py's non-convex setting): the peers that take a whole
    model, Kronfluence's (E)K-FAC over the ``nn.Linear`` modules among the selected parameters ``names`` (the
    others, such as LayerNorms, are not attributed: Kronfluence supports linear and convolution layers) and
    dattri's TRAK over all of them (:func:`dattri_text_configs`), on the texts tokenized once and padded to the
    longest. ``model`` is modified (see :class:`TextModel`)."""
    tracked = [f"model.{m}" for m, module in model.named_modules()
               if isinstance(module, nn.Linear) and f"{m}.weight" in names]

    def dataset(texts: list, labels) -> TensorDataset:
        batch = task.encode(texts)
        tensors = [batch["input_ids"], batch["attention_mask"]] + \
            ([batch["token_type_ids"]] if "token_type_ids" in batch else [])
        return TensorDataset(*tensors, torch.as_tensor(labels).long())

    data = {"model": TextModel(model, task), "tracked": tracked, "params": {f"model.{n}" for n in names},
            "train_set": dataset(train_texts, y_train), "query_set": dataset(test_texts, y_test_pred),
            "batch_size": 32, "seed": seed}
    log(f"Kronfluence attributes {len(tracked)} linear modules of the model: {', '.join(tracked)}")
    # dattri first: Kronfluence's prepare_model wraps the model's linear layers
    return run_configs({"dattri": dattri_text_configs, "kronfluence": kronfluence_configs}, data,
                       (len(test_texts), len(train_texts)), settings, only)


def run_configs(libraries: dict, data: dict, shape: tuple[int, int], settings=None,
                only: list[str] | None = None) -> list[dict]:
    """Run every configuration of ``libraries`` (name → configs(data)) that ``only`` matches, each a row with
    its (T, n) ``shape`` scores or the error it raised."""
    recipe = None if settings is None else {k: getattr(settings, k) for k in ("epochs", "lr", "batch_size")
                                            if hasattr(settings, k)}
    rows = []
    for library, configs in libraries.items():
        try:
            listed = configs(data)
        except ImportError as e:
            log(f"{library} not importable ({e}): skipped; pip install -e '.[peers]'")
            continue
        for name, config_settings, run in listed:
            if only is not None and not any(fnmatch.fnmatchcase(name, p) for p in only):
                continue
            try:
                with PeakRSS() as memory:
                    start = time.perf_counter()
                    scores = np.asarray(run(), dtype=np.float64)
                    seconds = time.perf_counter() - start
                if scores.shape != shape:
                    raise ValueError(f"scores of shape {scores.shape}, expected {shape}")
            except Exception as e:  # a peer failing is a finding, not a crash of the benchmark
                log(f"{name} failed: {type(e).__name__}: {e}")
                rows.append({"config": name, "library": library, "version": version(library),
                             "error": f"{type(e).__name__}: {e}", "settings": config_settings})
                continue
            finite = bool(np.isfinite(scores).all())
            log(f"{name}: {seconds:.1f} s, peak +{memory.mb} MB" + ("" if finite else ", NON-FINITE scores"))
            rows.append({"config": name, "library": library, "version": version(library), "scores": scores,
                         "seconds": round(seconds, 2), "peak_mb": memory.mb,
                         "settings": {**config_settings, **({"recipe": recipe} if recipe else {})}})
    return rows


def workdir_checkpoints(wd, config, label_names: list[str], max_length: int) -> list[tuple[nn.Linear, float]]:
    """(head, learning rate) of every checkpoint of a workdir trained with --freeze-encoder."""
    from datablame.influence.models import load_classifier

    out = []
    for ck in config.checkpoints:
        model, task = load_classifier(wd.checkpoint_path(ck), label_names, "cpu", max_length)
        out.append((copy.deepcopy(task.head(model)), ck.learning_rate))
    return out


# --------------------------------------------------------------------------------------------------------- main
def pair_agreement(a: np.ndarray, b: np.ndarray, spearman: Callable) -> dict:
    """(T, n) scores ``a`` against a reference ``b``: Spearman and Pearson correlation over all (test, train)
    pairs, the mean over test points of the Spearman correlation across training examples (blind to a per-test
    scale, as the LDS is), and the relative error ‖a − b‖/‖b‖."""
    per_test = float(np.mean([spearman(a[t], b[t]) for t in range(len(a))]))
    a1, b1 = a.ravel(), b.ravel()
    return {"spearman": round(spearman(a1, b1), 4), "pearson": round(float(np.corrcoef(a1, b1)[0, 1]), 4),
            "spearman_per_test": round(per_test, 4),
            "rel_err": float(f"{float(np.linalg.norm(a1 - b1) / np.linalg.norm(b1)):.3g}")}


def margin_scale(head: nn.Linear, xq: torch.Tensor, yq: torch.Tensor) -> np.ndarray:
    """(T, 1) 1/(1 − p_ŷ): with two classes the gradient of −margin is that of the cross-entropy of ŷ times
    1/(1 − p_ŷ), so a peer differentiating the margin is compared with exact influence times this."""
    with torch.no_grad():
        p = torch.softmax(head(xq).double(), -1).gather(1, yq[:, None].long())
    return (1.0 / (1.0 - p)).numpy()


SWEEP = [1e-8, 1e-6, 1e-4, 1e-3, 1e-2, 1e-1]


def ekfac_sweep(x, y, xq, yq, head, seed, masks, margins, resamples, fb) -> list[dict]:
    """Kronfluence EK-FAC (its float32 defaults, and float64 throughout) at each damping of ``SWEEP`` against
    exact influence at the same damping, and its LDS."""
    data = {"x": x.float(), "y": y.long(), "xq": xq.float(), "yq": yq.long(), "head": copy.deepcopy(head).float(),
            "seed": seed, "checkpoints": []}
    out = []
    for double in (False, True):
        for name, _, run in kronfluence_configs(data, ("ekfac",), [(d, f"-d{d:g}") for d in SWEEP], double):
            damping = float(name.rsplit("-d", 1)[1])
            scores = run()
            exact, _ = fb.exact_influence(fb.theta_of(head), x, y, xq, yq, damping)
            exact = exact * margin_scale(head, xq, yq)  # Kronfluence differentiates −margin
            value, ci = fb.summary(fb.lds(scores, masks, margins), resamples)
            out.append({"damping": damping, "dtypes": "float64" if double else "float32", "lds": value,
                        **pair_agreement(scores, exact, fb.spearman)})
            log(f"EK-FAC sweep {out[-1]}")
    return out


def main() -> None:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    import faithfulness as fb
    from artifacts import subset_parser

    parser = subset_parser(__doc__.splitlines()[0])
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--subsets", type=int, default=50)
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--only", nargs="+", help="shell patterns of peer configurations to run")
    parser.add_argument("--sweep", action="store_true", help="with --only: also the EK-FAC damping sweep")
    parser.add_argument("--quick", action="store_true", help="--n 300 --test 20 --subsets 10")
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()
    if args.quick:
        args.n, args.test, args.subsets = 300, 20, 10
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = pathlib.Path(tmp_name)
        # faithfulness.run's task, step for step (same seeds: the same subsets and margins)
        rng = np.random.default_rng(args.seed)
        examples = fb.subset_file(args.data, "train", args.n, rng, tmp)
        test = fb.subset_file(args.data, "dev", args.test, rng, tmp, examples.label_names)
        settings = fb.TrainSettings(epochs=args.epochs, lr=args.lr, batch_size=16, checkpoints=3, seed=args.seed,
                                    freeze_encoder=True, pooling=args.pooling, device="cpu")
        base = str(fb.minilm_path())
        config = fb.train(examples, base, tmp / "wd", settings)
        wd = fb.Workdir(tmp / "wd")
        model, task = fb.load_classifier(wd.checkpoint_path(config.checkpoints[-1]), examples.label_names, "cpu",
                                         settings.max_length)
        x = fb.FeatureCache(examples, fb.features_folder(wd.root)).of(task, model).rows(np.arange(args.n))
        y = torch.as_tensor(examples.labels)
        test_logits, test_x = fb.logits_and_features_of(task, model, test)
        predictions = test_logits.argmax(-1)
        params = fb.num_params(model, fb.select_params(model, task, ["head"]))
        init = copy.deepcopy(task.head(fb.load_classifier(base, examples.label_names, "cpu", settings.max_length,
                                                          settings.seed, settings.pooling)[0]))
        size = round(args.fraction * args.n)
        masks = np.zeros((args.subsets, args.n), dtype=bool)
        margins = np.empty((args.subsets, args.test))
        subsets = [np.sort(rng.choice(args.n, size, replace=False)) for _ in range(args.subsets)]
        for s, rows in enumerate(subsets):
            masks[s, rows] = True
        heads = fb.retrain_heads(init, x, y, subsets, settings)
        with torch.no_grad():
            for s, logits in enumerate(heads.logits(test_x)):
                margins[s] = fb.margin(logits.double(), predictions).numpy()
        resamples = np.random.default_rng(args.seed).integers(0, args.test, (fb.BOOTSTRAP, args.test))
        log(f"task ready: n {args.n}, {args.test} test points, {args.subsets} subsets")

        results = []
        cfg = fb.Config("influence", None, "auto", "auto")
        built = fb.build_method(wd, cfg.method, cfg.settings(params, args.seed))
        matrices, seconds = fb.score_matrices(built, list(test.texts), predictions)
        for scoring, scores in matrices.items():
            value, ci = fb.summary(fb.lds(scores, masks, margins), resamples)
            results.append({"config": cfg.name, "library": "datablame", "scoring": scoring, "lds": value,
                            "lds_ci95": ci, "seconds": round(seconds, 2)})
        head = task.head(model)
        exact_auto, lam_auto = fb.exact_influence(fb.theta_of(head), x, y, test_x, predictions, "auto")
        scale_margin = margin_scale(head, test_x, predictions) if head.out_features == 2 else 1.0
        sign = {"reference": f"exact influence, λ auto = {lam_auto:.4g} (times 1/(1 − p_ŷ) for peers that "
                             "differentiate the margin)",
                "datablame": pair_agreement(matrices["raw"], exact_auto, fb.spearman)}
        rows = peer_scores(x, y, test_x, predictions, head, settings,
                           workdir_checkpoints(wd, config, examples.label_names, settings.max_length), args.only,
                           args.seed)
        for row in rows:
            if "scores" not in row:
                results.append({k: v for k, v in row.items()})
                continue
            value, ci = fb.summary(fb.lds(row["scores"], masks, margins), resamples)
            results.append({"config": row["config"], "library": row["library"], "version": row["version"],
                            "scoring": "raw", "lds": value, "lds_ci95": ci, "seconds": row["seconds"],
                            "peak_mb": row["peak_mb"], "settings": row["settings"]})
            scale = scale_margin if "margin" in row["settings"].get("test_function", "") else 1.0
            check = {"vs_exact_auto": pair_agreement(row["scores"], exact_auto * scale, fb.spearman)}
            lam = row["settings"].get("damping_value", row["settings"].get("regularization"))
            if lam is not None:
                exact, _ = fb.exact_influence(fb.theta_of(head), x, y, test_x, predictions, float(lam))
                check[f"vs_exact_at_own_damping_{float(lam):.3g}"] = pair_agreement(row["scores"], exact * scale,
                                                                                    fb.spearman)
            sign[row["config"]] = check
            log(f"{row['config']}: LDS {value} {ci}; Spearman vs exact λ auto {check['vs_exact_auto']['spearman']}")
        if version("kronfluence") is not None and (args.only is None or args.sweep):
            sign["kronfluence_ekfac_damping_sweep"] = ekfac_sweep(x, y, test_x, predictions, head, args.seed,
                                                                  masks, margins, resamples, fb)
    out = {"benchmark": "faithfulness-peers",
           "setting": {"n": args.n, "test": args.test, "subsets": args.subsets, "fraction": args.fraction,
                       "seed": args.seed, "params": params, "threads": torch.get_num_threads(),
                       "versions": {lib: version(lib) for lib in LIBRARIES}},
           "results": results, "sign_check": sign}
    print(json.dumps(out, indent=2, ensure_ascii=False))
    if args.out is not None:
        fb.atomic_write_json(args.out, out)


if __name__ == "__main__":
    main()
