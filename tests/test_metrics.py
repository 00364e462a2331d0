"""Host-side metrics on small hand-computed cases and against scipy's matrix square root."""

import math

import numpy as np
import pytest
import scipy.linalg

from jaxdiff import metrics

# Three classes; the top-class confidences are 0.9, 0.8, 0.4 and 0.4.
PROBS = np.array(
  [
    [0.9, 0.05, 0.05],  # right, confident
    [0.1, 0.8, 0.1],  # wrong, confident
    [0.4, 0.3, 0.3],  # right, unsure
    [0.3, 0.3, 0.4],  # wrong, unsure
  ]
)
LABELS = np.array([0, 0, 0, 1])


def test_accuracy():
  assert metrics.accuracy(PROBS, LABELS) == 0.5
  assert metrics.accuracy(PROBS, [0, 1, 0, 2]) == 1.0


def test_negative_log_likelihood():
  expected = -(math.log(0.9) + math.log(0.1) + math.log(0.4) + math.log(0.3)) / 4
  assert metrics.negative_log_likelihood(PROBS, LABELS) == pytest.approx(expected, rel=1e-12)


def test_negative_log_likelihood_of_a_zero_probability_is_finite():
  nll = metrics.negative_log_likelihood(np.array([[1.0, 0.0]]), np.array([1]))
  assert nll == pytest.approx(-math.log(1e-12))


def test_expected_calibration_error():
  # Bins (0, 0.5] and (0.5, 1]: each holds one right and one wrong example.
  # High: |0.5 − (0.9 + 0.8)/2| = 0.35; low: |0.5 − 0.4| = 0.1; each weighs 2/4.
  ece = metrics.expected_calibration_error(PROBS, LABELS, num_bins=2)
  assert ece == pytest.approx(0.5 * 0.35 + 0.5 * 0.1)


def test_expected_calibration_error_bins_include_their_upper_edge():
  # 0.5 (right) belongs to (0, 0.5] and 0.6 (wrong) to (0.5, 1]: |1 − 0.5| + |0 − 0.6|, over 2.
  # Were the bins [lo, hi), both would share one and give |1 − 1.1| / 2 = 0.05.
  probs = np.array([[0.5, 0.5], [0.6, 0.4]])
  ece = metrics.expected_calibration_error(probs, np.array([0, 1]), num_bins=2)
  assert ece == pytest.approx(0.55)


def test_expected_calibration_error_is_zero_when_certain_and_right():
  probs = np.eye(3)
  assert metrics.expected_calibration_error(probs, np.arange(3)) == 0.0


def test_gaussian_fit_matches_the_definition_and_np_cov():
  features = np.random.default_rng(0).normal(size=(50, 4))
  mean, cov = metrics.gaussian_fit(features)
  centred = features - features.mean(axis=0)
  np.testing.assert_allclose(mean, features.sum(axis=0) / 50, rtol=1e-12)
  np.testing.assert_allclose(cov, centred.T @ centred / 49, rtol=1e-12)
  np.testing.assert_allclose(cov, np.cov(features, rowvar=False), rtol=1e-12)
  assert mean.shape == (4,) and cov.shape == (4, 4)


def _random_spd(rng, dim):
  matrix = rng.normal(size=(dim, dim))
  return matrix @ matrix.T + 0.1 * np.eye(dim)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_distance_matches_scipy_sqrtm(seed):
  rng = np.random.default_rng(seed)
  dim = 6
  mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
  cov1, cov2 = _random_spd(rng, dim), _random_spd(rng, dim)
  root = scipy.linalg.sqrtm(cov1 @ cov2)
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2) - 2 * np.trace(root).real
  assert metrics.frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(expected, rel=1e-8)
  # A distance: symmetric in its two Gaussians.
  assert metrics.frechet_distance(mu2, cov2, mu1, cov1) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_of_one_dimension():
  # (0 − 1)² + 1 + 4 − 2·√(1·4) = 2.
  assert metrics.frechet_distance(0.0, 1.0, 1.0, 4.0) == pytest.approx(2.0)


def test_frechet_distance_is_zero_for_identical_gaussians():
  rng = np.random.default_rng(3)
  mu, cov = rng.normal(size=5), _random_spd(rng, 5)
  assert metrics.frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-9)
  # Fewer samples than dimensions: a singular covariance, whose rounding is clipped at zero.
  mean, singular = metrics.gaussian_fit(rng.normal(size=(3, 5)))
  distance = metrics.frechet_distance(mean, singular, mean, singular)
  assert 0.0 <= distance < 1e-9


def test_frechet_distance_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="shapes do not match"):
    metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_seed_statistic_uses_the_sample_std_and_leaves_out_missing_values():
  stat = metrics.seed_statistic([1.0, 2.0, None, 3.0, float("nan")])
  assert stat["n"] == 3 and stat["mean"] == 2.0
  assert stat["std"] == pytest.approx(1.0)  # ddof = 1; the population std would be 0.816
  assert stat["se"] == pytest.approx(1.0 / np.sqrt(3))
  assert metrics.seed_statistic([4.0]) == {"mean": 4.0, "std": None, "se": None, "n": 1}
  assert metrics.seed_statistic([None]) == {"mean": None, "std": None, "se": None, "n": 0}


def test_a_paired_difference_sees_what_an_unpaired_comparison_cannot():
  # Three seeds whose difficulty varies far more than the methods' difference.
  baseline = [10.0, 20.0, 30.0]
  better = [9.0, 18.8, 29.1]
  unpaired_gap = metrics.seed_statistic(baseline)["mean"] - metrics.seed_statistic(better)["mean"]
  assert unpaired_gap < metrics.seed_statistic(baseline)["std"]  # hidden by the seeds' spread
  difference = metrics.paired_difference(better, baseline)
  assert difference["n"] == 3 and difference["mean"] == pytest.approx(-1.0333333)
  assert metrics.significant(difference) is True  # t = 11.7 on 2 degrees of freedom > 4.30
  assert metrics.significant(metrics.paired_difference([9.0, 21.0, 29.0], baseline)) is False
  assert metrics.significant(metrics.paired_difference([9.0], [10.0])) is None
  assert metrics.paired_difference([1.0, None], [0.0, 5.0])["n"] == 1  # only complete pairs
  with pytest.raises(ValueError, match="same seeds"):
    metrics.paired_difference([1.0], [1.0, 2.0])
