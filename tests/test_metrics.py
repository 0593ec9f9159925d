"""electra_fn.metrics against sklearn.metrics and scipy.stats, including ties and degenerate inputs."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn import metrics as skm

from electra_fn import metrics as M

fast = settings(max_examples=60, deadline=None)


@st.composite
def binary_pairs(draw, min_size=1, max_size=40):
    n = draw(st.integers(min_size, max_size))
    preds = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    labels = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    return np.array(preds), np.array(labels)


# Scores on a coarse grid, like STS-B's 0..5 with many ties.
scores = st.integers(0, 50).map(lambda k: k / 10)


@st.composite
def score_pairs(draw, min_size=2, max_size=40):
    n = draw(st.integers(min_size, max_size))
    return (np.array(draw(st.lists(scores, min_size=n, max_size=n))),
            np.array(draw(st.lists(scores, min_size=n, max_size=n))))


@fast
@given(binary_pairs())
def test_accuracy_matches_sklearn(pair):
    p, y = pair
    assert M.accuracy(p, y) == pytest.approx(skm.accuracy_score(y, p))


@fast
@given(st.integers(1, 30).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 2), min_size=n, max_size=n),
    st.lists(st.integers(0, 2), min_size=n, max_size=n))))
def test_accuracy_multiclass_matches_sklearn(pair):
    p, y = pair
    assert M.accuracy(p, y) == pytest.approx(skm.accuracy_score(y, p))


@fast
@given(binary_pairs())
def test_f1_matches_sklearn(pair):
    p, y = pair
    expected = skm.f1_score(y, p, pos_label=1, zero_division=0.0)
    assert M.f1(p, y) == pytest.approx(expected)


@fast
@given(binary_pairs())
def test_mcc_matches_sklearn(pair):
    p, y = pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = skm.matthews_corrcoef(y, p)
    got = M.matthews_corrcoef(p, y)
    assert not math.isnan(got)
    assert got == pytest.approx(expected, abs=1e-12)


@fast
@given(score_pairs())
def test_pearson_matches_scipy(pair):
    p, y = pair
    got = M.pearson(p, y)
    if np.all(p == p[0]) or np.all(y == y[0]):
        assert got == 0.0
    else:
        assert got == pytest.approx(stats.pearsonr(p, y)[0], abs=1e-9)


@fast
@given(score_pairs())
def test_spearman_matches_scipy_with_ties(pair):
    p, y = pair
    got = M.spearman(p, y)
    if np.all(p == p[0]) or np.all(y == y[0]):
        assert got == 0.0
    else:
        assert got == pytest.approx(stats.spearmanr(p, y)[0], abs=1e-9)


@fast
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=30))
def test_average_ranks_match_scipy_rankdata(values):
    x = np.array(values)
    np.testing.assert_allclose(M.average_ranks(x), stats.rankdata(x, method="average"))


@fast
@given(score_pairs(), st.floats(1e-3, 1e3), st.floats(-1e3, 1e3))
def test_correlations_invariant_to_affine_maps(pair, scale, shift):
    p, y = pair
    assert M.pearson(p * scale + shift, y) == pytest.approx(M.pearson(p, y), abs=1e-6)
    assert M.spearman(p * scale + shift, y) == pytest.approx(M.spearman(p, y), abs=1e-9)


def test_degenerate_inputs_give_zero_not_nan():
    ones, mixed = np.ones(6, dtype=int), np.array([0, 1, 1, 0, 1, 0])
    assert M.matthews_corrcoef(ones, mixed) == 0.0  # constant predictions
    assert M.matthews_corrcoef(mixed, ones) == 0.0  # constant labels
    assert M.matthews_corrcoef(ones, ones) == 0.0
    assert M.f1(np.zeros(4, int), np.zeros(4, int)) == 0.0  # no positives anywhere
    assert M.pearson(np.full(5, 2.5), np.arange(5.0)) == 0.0  # constant predictions
    assert M.spearman(np.arange(5.0), np.full(5, 1.0)) == 0.0
    assert M.pearson([1.0], [2.0]) == 0.0  # a single value
    assert M.pearson([1e-200, 2e-200, 3e-200], [1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert M.pearson([1e200, 2e200, 4e200], [1.0, 2.0, 4.0]) == pytest.approx(1.0)


def test_perfect_and_inverse():
    y = np.array([0, 1, 1, 0, 1])
    assert M.matthews_corrcoef(y, y) == 1.0
    assert M.matthews_corrcoef(1 - y, y) == -1.0
    assert M.f1(y, y) == 1.0
    s = np.array([0.0, 1.5, 2.0, 5.0])
    assert M.pearson(s, s) == pytest.approx(1.0)
    assert M.spearman(-s ** 3, s) == pytest.approx(-1.0)


def test_input_validation():
    with pytest.raises(ValueError, match="binary"):
        M.f1([0, 2], [0, 1])
    with pytest.raises(ValueError, match="binary"):
        M.matthews_corrcoef([0, 1], [0, -1])
    with pytest.raises(ValueError, match="2 predictions but 3 labels"):
        M.accuracy([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="empty"):
        M.pearson([], [])
    assert math.isnan(M.pearson([0.0, float("nan")], [1.0, 2.0]))


def test_task_metrics_keys_and_values():
    p, y = np.array([1, 0, 1, 1]), np.array([1, 0, 0, 1])
    assert M.task_metrics("CoLA", p, y) == {"mcc": pytest.approx(skm.matthews_corrcoef(y, p))}
    for task in ("sst2", "SST-2", "rte", "qnli", "wnli", "mnli", "MNLI-m", "mnli-mm"):
        assert M.task_metrics(task, p, y) == {"accuracy": 0.75}
    for task in ("mrpc", "qqp"):
        assert M.task_metrics(task, p, y) == {"accuracy": 0.75, "f1": pytest.approx(0.8)}
    s, t = np.array([0.5, 2.0, 4.0, 3.0]), np.array([1.0, 2.5, 4.5, 2.0])
    out = M.task_metrics("STS-B", s, t)
    assert set(out) == {"pearson", "spearman"}
    assert out["pearson"] == pytest.approx(stats.pearsonr(s, t)[0])
    assert out["spearman"] == pytest.approx(stats.spearmanr(s, t)[0])
    with pytest.raises(ValueError, match="unknown GLUE task"):
        M.task_metrics("squad", p, y)


def test_main_metric_follows_electra_paper():
    expected = {"cola": "mcc", "stsb": "spearman", "STS-B": "spearman", "mrpc": "accuracy",
                "qqp": "accuracy", "sst2": "accuracy", "rte": "accuracy", "qnli": "accuracy",
                "wnli": "accuracy", "mnli": "accuracy", "MNLI-mm": "accuracy"}
    for task, name in expected.items():
        assert M.main_metric(task) == name
        assert name in M.task_metrics(task, [0, 1, 1], [0, 1, 0])


def test_glue_score_is_the_mean():
    assert M.glue_score({"cola": 0.5, "sst2": 0.9, "stsb": 0.85, "mrpc": 0.75}) == \
        pytest.approx(0.75)
    with pytest.raises(ValueError):
        M.glue_score({})
    with pytest.raises(ValueError, match="unknown"):
        M.glue_score({"bogus": 1.0})
