"""Label-issue detection on synthetic arrays: rank scores, suggested labels, combined rankings, and
cross-validated head probabilities that find flipped labels a memorising in-sample fit hides."""

import numpy as np
import pytest
import torch

from datablame.influence.detect import (CV_LAMBDAS, SCAN_METHODS, choose_cv_lambda, cleaned_cross_validation,
                                        cross_validated_mlp_probabilities, cross_validated_probabilities,
                                        clean_label_posterior, cross_validated_signals, diagonally_dominant,
                                        fit_softmax_head, neighbour_label_probabilities, noise_transition,
                                        rank_label_issues, rank_scores, stacked_probabilities, stratified_folds,
                                        suggest_labels)
from datablame.influence.errors import DatablameError


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: one thread (several threads on a busy 2-core machine are 100× slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_rank_scores_are_fractions_with_shared_ties():
    assert np.allclose(rank_scores([3.0, 1.0, 2.0, 2.0]), [1.0, 0.25, 0.625, 0.625])


def test_suggested_label_is_the_most_probable_other_label():
    probs = np.array([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    assert suggest_labels(np.array([0, 1, 2]), probs).tolist() == [1, 0, 1]


def test_planted_issues_come_first_and_signals_combine():
    rng = np.random.default_rng(0)
    n = 50
    labels = rng.integers(0, 3, n)
    probs = rng.dirichlet(np.ones(3), n) * 0.3
    probs[np.arange(n), labels] += 0.7  # the model agrees with every given label…
    planted = [5, 17, 33]
    probs[planted] = [[0.02, 0.03, 0.95], [0.02, 0.95, 0.03], [0.95, 0.03, 0.02]]
    labels[planted] = [0, 0, 1]  # …but these three
    issues = rank_label_issues(labels, probs)
    assert sorted(issues.order[:3].tolist()) == planted
    assert issues.suggested[planted].tolist() == [2, 1, 0]
    assert np.allclose(issues.label_probability[planted], [0.02, 0.02, 0.03])
    assert sorted(issues.order.tolist()) == list(range(n)) and issues.score.max() <= 1.0
    # a self-influence signal pointing elsewhere moves the ranking in proportion to its weight
    si = np.zeros(n)
    si[40] = 10.0
    mixed = rank_label_issues(labels, probs, self_influence={"tracin": si})
    assert set(mixed.parts) == {"loss", "self_influence:tracin"} and mixed.order[0] == 40
    assert rank_label_issues(labels, probs, self_influence={"tracin": si}, weights={"loss": 1}).order[:3].tolist() \
        == issues.order[:3].tolist()
    alone = rank_label_issues(labels, probs, self_influence={"tracin": si}, weights={"self_influence:tracin": 1})
    assert alone.order[0] == 40 and np.allclose(alone.score, alone.parts["self_influence:tracin"])


def test_bad_signals_are_user_errors():
    with pytest.raises(DatablameError, match="no probabilities"):
        rank_label_issues([0, 1], self_influence={"tracin": np.ones(2)})
    with pytest.raises(DatablameError, match="non-finite"):
        rank_label_issues([0, 1], np.full((2, 2), 0.5), self_influence={"tracin": np.array([1.0, np.nan])})
    with pytest.raises(DatablameError, match="no weighted signal"):
        rank_label_issues([0, 1], np.full((2, 2), 0.5), weights={"cv": 1})


def test_stratified_folds_spread_each_label_evenly():
    labels = np.array([0] * 23 + [1] * 7)
    fold = stratified_folds(labels, 5, seed=3)
    for c, size in [(0, 23), (1, 7)]:
        counts = np.bincount(fold[labels == c], minlength=5)
        assert counts.sum() == size and counts.max() - counts.min() <= 1


def test_softmax_head_is_stationary():
    rng = np.random.default_rng(1)
    x = torch.as_tensor(np.c_[rng.normal(size=(40, 3)), np.ones(40)])
    y = torch.as_tensor(rng.integers(0, 2, 40))
    w = fit_softmax_head(x, y, 2, lam=1e-2).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(x @ w.T, y) + 1e-2 * w.pow(2).sum()
    (grad,) = torch.autograd.grad(loss, w)
    assert grad.abs().max() < 1e-6


def test_cross_validation_finds_flips_that_in_sample_fit_memorises():
    rng = np.random.default_rng(0)
    n, h = 80, 60
    clean = rng.integers(0, 2, n)
    x = rng.normal(size=(n, h)) + 1.5 * (2 * clean[:, None] - 1) * (np.arange(h) < 3)
    flipped = rng.choice(n, 8, replace=False)
    noisy = clean.copy()
    noisy[flipped] = 1 - noisy[flipped]
    design = torch.as_tensor(np.c_[(x - x.mean(0)) / x.std(0), np.ones(n)])
    w = fit_softmax_head(design, torch.as_tensor(noisy), 2, lam=1e-4)
    in_sample = (design @ w.T).softmax(-1).numpy()
    cv = cross_validated_probabilities(x, noisy, 2, folds=5, lam=1e-1, repeats=2)
    assert np.allclose(cv.sum(1), 1.0)
    assert in_sample[flipped, noisy[flipped]].min() > 0.5  # memorised: in-sample probabilities hide the flips
    found = rank_label_issues(noisy, cv_probabilities=cv).order[:8]
    assert len(set(found) & set(flipped)) >= 6
    assert (rank_label_issues(noisy, cv_probabilities=cv).suggested[flipped] == clean[flipped]).all()
    single = [cross_validated_probabilities(x, noisy, 2, lam=1e-1, seed=s, repeats=1) for s in range(2)]
    assert np.allclose(cv, np.mean(single, 0)) and not np.allclose(single[0], single[1])
    with pytest.raises(DatablameError, match="too few"):
        cross_validated_probabilities(x[:6], noisy[:6], 2)
    lam, first = choose_cv_lambda(x, noisy, 2)  # chosen by the given labels alone: the least out-of-fold loss
    loss = {c: -np.log(cross_validated_probabilities(x, noisy, 2, lam=c, repeats=1)[np.arange(n), noisy]).mean()
            for c in CV_LAMBDAS}
    assert lam == min(loss, key=loss.get) and np.allclose(first, cross_validated_probabilities(x, noisy, 2, lam=lam,
                                                                                               repeats=1))
    assert np.allclose(cross_validated_probabilities(x, noisy, 2, repeats=2),
                       cross_validated_probabilities(x, noisy, 2, lam=lam, repeats=2))


def test_cross_validated_mlps_find_flips_a_linear_head_cannot():
    """Labels set by the sign of x₀·x₁ (XOR: no linear head does better than chance): the out-of-fold MLPs give
    the flipped labels low probability and the linear heads do not; the default scan ranks both; seeded."""
    rng = np.random.default_rng(1)
    n = 1000
    x = np.c_[rng.uniform(-1, 1, size=(n, 2)), 0.1 * rng.normal(size=(n, 4))]
    clean = (x[:, 0] * x[:, 1] > 0).astype(int)
    flipped = rng.choice(n, 50, replace=False)
    noisy = clean.copy()
    noisy[flipped] = 1 - noisy[flipped]
    mlp = cross_validated_mlp_probabilities(x, noisy, 2, repeats=1)
    linear = cross_validated_probabilities(x, noisy, 2, repeats=1)
    assert np.allclose(mlp.sum(1), 1.0) and np.array_equal(mlp, cross_validated_mlp_probabilities(x, noisy, 2,
                                                                                                  repeats=1))
    top = lambda issues: len(set(issues.order[:50].tolist()) & set(flipped.tolist()))  # noqa: E731
    assert top(rank_label_issues(noisy, cv_mlp_probabilities=mlp)) >= 30
    assert top(rank_label_issues(noisy, cv_probabilities=linear)) <= 10
    both = rank_label_issues(noisy, cv_probabilities=linear, cv_mlp_probabilities=mlp, weights=SCAN_METHODS["cv-mean"])
    assert set(both.parts) == {"cv", "cv_mlp"}
    assert np.allclose(both.score, (both.parts["cv"] + both.parts["cv_mlp"]) / 2)
    assert np.allclose(both.label_probability, ((linear + mlp) / 2)[np.arange(n), noisy])


def test_heads_fitted_without_some_examples_still_predict_them():
    """``fit`` leaves rows out of every fold's fit (and its standardisation) but predicts them: replacing those
    rows' features changes their own probabilities only."""
    rng = np.random.default_rng(2)
    n, h = 60, 5
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, h)) + (2 * y[:, None] - 1)
    fit = np.ones(n, dtype=bool)
    fit[:6] = False
    garbage = x.copy()
    garbage[:6] = 50 * rng.normal(size=(6, h))
    for probabilities in (lambda f: cross_validated_probabilities(f, y, 2, lam=1e-1, repeats=1, fit=fit),
                          lambda f: cross_validated_mlp_probabilities(f, y, 2, repeats=1, fit=fit)):
        a, b = probabilities(x), probabilities(garbage)
        assert np.allclose(a[6:], b[6:]) and not np.allclose(a[:6], b[:6])
    assert not np.allclose(cross_validated_probabilities(x, y, 2, lam=1e-1, repeats=1)[6:],  # without fit: all
                           cross_validated_probabilities(garbage, y, 2, lam=1e-1, repeats=1)[6:])


def flipped_blobs(seed: int, n: int = 100, h: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """(n, h) features whose first two dimensions carry a random binary label, and (n,) labels with the first 10
    flipped."""
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, 2, n)
    x = rng.normal(size=(n, h)) + 1.2 * (2 * clean[:, None] - 1) * (np.arange(h) < 2)
    noisy = clean.copy()
    noisy[:10] = 1 - noisy[:10]
    return x, noisy


def keep_all_but_top(suspicion: np.ndarray, count: int) -> np.ndarray:
    """(n,) bool: every example but the ``count`` of highest suspicion (ties: lower position first)."""
    keep = np.ones(len(suspicion), dtype=bool)
    keep[np.argsort(-suspicion, kind="stable")[:count]] = False
    return keep


def test_cleaned_cross_validation_refits_without_the_first_rounds_most_suspicious():
    """Round one: one partition of each kind; round two: repeats − 1 partitions fitted without the ``share`` most
    suspicious by round one's ranks (what is returned); share 0 is one round of ``repeats`` partitions."""
    x, noisy = flipped_blobs(3)
    n = len(noisy)
    linear, mlp = cleaned_cross_validation(x, noisy, 2, repeats=3, share=0.2)
    lam, first = choose_cv_lambda(x, noisy, 2)
    mlp_first = cross_validated_mlp_probabilities(x, noisy, 2, repeats=1)
    suspicion = (rank_scores(-first[np.arange(n), noisy]) + rank_scores(-mlp_first[np.arange(n), noisy])) / 2
    keep = keep_all_but_top(suspicion, 20)
    assert np.allclose(linear, cross_validated_probabilities(x, noisy, 2, lam=lam, seed=1, repeats=2, fit=keep))
    assert np.allclose(mlp, cross_validated_mlp_probabilities(x, noisy, 2, seed=1, repeats=2, fit=keep))
    one_round = cleaned_cross_validation(x, noisy, 2, repeats=3, share=0, mlp=False)
    assert one_round[1] is None and np.allclose(one_round[0], cross_validated_probabilities(x, noisy, 2, repeats=3))


def test_neighbour_label_probabilities_equal_brute_force_cosine_neighbours(monkeypatch):
    """Each row: the label shares of its k most cosine-similar other rows (numpy's full similarity matrix); a
    duplicate of a row counts as its neighbour, the row itself never; blocks do not change anything; k is capped
    at n − 1; past ``exact_up_to`` examples an HNSW graph searches, near-exact on so few."""
    import faiss

    hnsw = faiss.IndexHNSWFlat
    rng = np.random.default_rng(4)
    n, h, k = 150, 8, 7
    x = rng.normal(size=(n, h))
    x[1] = 3 * x[0]  # same direction: row 0's nearest neighbour is row 1 and vice versa
    y = rng.integers(0, 3, n)
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = z @ z.T
    np.fill_diagonal(sim, -np.inf)
    nearest = np.argsort(-sim, axis=1)[:, :k]
    expected = np.stack([(y[nearest] == c).mean(1) for c in range(3)], 1)
    got = neighbour_label_probabilities(x, y, 3, k=k, block=32)
    assert np.allclose(got, expected) and np.allclose(got, neighbour_label_probabilities(x, y, 3, k=k))
    assert nearest[0, 0] == 1 and nearest[1, 0] == 0
    assert np.allclose(neighbour_label_probabilities(x[:4], y[:4], 3, k=30).sum(1), 1.0)  # 3 neighbours each
    graphs = []
    monkeypatch.setattr(faiss, "IndexHNSWFlat", lambda *args: graphs.append(args) or hnsw(*args))
    graph = neighbour_label_probabilities(x, y, 3, k=k, exact_up_to=n - 1)  # past the limit: HNSW, near-exact here
    assert len(graphs) == 1 and np.abs(graph - expected).mean() < 0.02
    with pytest.raises(DatablameError, match="no neighbours"):
        neighbour_label_probabilities(x[:1], y[:1], 3)


def test_stacking_learns_a_class_prior_an_input_is_confounded_by():
    """An input that gives a small class a hundredth of its probability ranks that whole class as suspicious; the head
    stacked on it learns the class's offset from the given labels and finds the flips as the unconfounded input
    does, with a junk input beside it."""
    rng = np.random.default_rng(5)
    n = 900
    clean = rng.choice(3, n, p=[0.45, 0.45, 0.1])
    flipped = rng.choice(n, 90, replace=False)
    noisy = clean.copy()
    noisy[flipped] = (clean[flipped] + rng.integers(1, 3, 90)) % 3
    logits = 2.5 * np.eye(3)[clean] + rng.normal(size=(n, 3))
    good = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    confounded = good * [1, 1, 0.01]
    confounded /= confounded.sum(1, keepdims=True)
    junk = rng.dirichlet(np.ones(3), n)
    top = lambda p: len(set(np.argsort(p[np.arange(n), noisy])[:90].tolist()) & set(flipped.tolist()))  # noqa
    stacked = stacked_probabilities([confounded, junk], noisy, 3)
    assert top(confounded) < top(good) - 15
    assert top(stacked) >= top(good) - 3
    assert np.allclose(stacked.sum(1), 1.0)
    with pytest.raises(DatablameError, match="stacking needs"):
        stacked_probabilities([good[:, :2]], noisy, 3)


def test_cross_validated_signals_stack_the_cleaned_heads_and_the_neighbours():
    """``stacked`` computes all four: the two-round heads, the neighbours, and the head stacked on them (partition
    seed + repeats) fitted without the share most suspicious by the heads' mean rank, turned into the posterior of
    the true class by the noise its twin fitted on every label shows; one signal alone computes only itself."""
    x, noisy = flipped_blobs(6)
    n = len(noisy)
    got = cross_validated_signals(x, noisy, 2, repeats=3, share=0.2)
    linear, mlp = cleaned_cross_validation(x, noisy, 2, repeats=3, share=0.2)
    knn = neighbour_label_probabilities(x, noisy, 2)
    suspicion = (rank_scores(-linear[np.arange(n), noisy]) + rank_scores(-mlp[np.arange(n), noisy])) / 2
    keep = keep_all_but_top(suspicion, 20)
    assert np.allclose(got["cv_probabilities"], linear) and np.allclose(got["cv_mlp_probabilities"], mlp)
    assert np.allclose(got["knn_probabilities"], knn)
    cleaned = stacked_probabilities([linear, mlp, knn], noisy, 2, seed=3, fit=keep)
    transition = noise_transition(stacked_probabilities([linear, mlp, knn], noisy, 2, seed=3))
    assert diagonally_dominant(transition)
    assert np.allclose(got["stacked_probabilities"], clean_label_posterior(noisy, cleaned, transition))
    assert list(cross_validated_signals(x, noisy, 2, ["knn"])) == ["knn_probabilities"]
    issues = rank_label_issues(noisy, weights=SCAN_METHODS["cv"], **got)
    assert np.allclose(issues.score, issues.parts["stacked"])
    assert np.allclose(issues.label_probability, got["stacked_probabilities"][np.arange(n), noisy])


def test_anchor_points_recover_a_systematic_noise_and_bayes_finds_its_flips():
    """Three classes, a third of class 0 relabelled 1: the anchors of a model of the given labels (the clean
    posterior pushed through T) give back T; the posterior of the true class is Bayes' rule, row by row; ranking by
    it finds more of the flips than the given labels' own probability; a class no anchor recognises breaks
    diagonal dominance."""
    rng = np.random.default_rng(7)
    n = 3000
    clean = rng.integers(0, 3, n)
    logits = 2.5 * np.eye(3)[clean] + rng.normal(size=(n, 3))
    posterior = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    transition = np.array([[0.67, 0.33, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    noisy = np.array([rng.choice(3, p=transition[c]) for c in clean])
    given_model = posterior @ transition
    estimate = noise_transition(given_model)
    assert np.abs(estimate - transition).max() < 0.05 and diagonally_dominant(estimate)
    corrected = clean_label_posterior(noisy, posterior, estimate)
    i = 5
    bayes = estimate[:, noisy[i]] * posterior[i] / (estimate[:, noisy[i]] * posterior[i]).sum()
    assert np.allclose(corrected[i], bayes) and np.allclose(corrected.sum(1), 1.0)
    flipped = set(np.flatnonzero(noisy != clean).tolist())
    top = lambda right: len(set(np.argsort(right, kind="stable")[:len(flipped)].tolist()) & flipped)  # noqa: E731
    assert top(corrected[np.arange(n), noisy]) > top(given_model[np.arange(n), noisy]) + 50
    assert not diagonally_dominant(np.array([[0.8, 0.1, 0.1], [0.45, 0.25, 0.3], [0.1, 0.1, 0.8]]))
