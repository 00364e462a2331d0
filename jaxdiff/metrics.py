"""Host-side metrics on numpy arrays: classification quality and Fréchet distances.

Everything here takes and returns plain numpy values (floats), so metrics can be computed
from saved predictions or features without JAX.

Seed statistics (:func:`seed_statistic`, :func:`paired_difference`) summarise a score over the
seeds of an experiment; runs that share their seeds' initial parameters and data order are
compared seed by seed.

Example:
  >>> probs, labels = np.array([[0.9, 0.1], [0.4, 0.6], [0.8, 0.2]]), np.array([0, 1, 1])
  >>> round(accuracy(probs, labels), 3), round(expected_calibration_error(probs, labels), 3)
  (0.667, 0.433)
  >>> rng = np.random.default_rng(0)
  >>> real, generated = rng.normal(0.0, 1.0, (1000, 2)), rng.normal(3.0, 1.0, (1000, 2))
  >>> round(frechet_distance(*gaussian_fit(real), *gaussian_fit(generated)))  # ≈ |μ₁ − μ₂|²
  18
  >>> errors = seed_statistic([1.68, 1.61, 1.75])  # one score per seed
  >>> round(errors["mean"], 2), round(errors["se"], 3)
  (1.68, 0.04)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypedDict

import numpy as np
import scipy.stats


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
  """Fraction of examples whose most probable class is the label."""
  return float(np.mean(np.argmax(probs, axis=-1) == np.asarray(labels)))


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
  """Mean of ``−log p[label]``, with probabilities clipped at 1e-12 so a zero stays finite."""
  labels = np.asarray(labels)
  picked = np.asarray(probs)[np.arange(labels.shape[0]), labels]
  return float(-np.mean(np.log(np.clip(picked, 1e-12, None))))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, num_bins: int = 15) -> float:
  """Expected calibration error with equal-width bins of the top-class confidence.

  ``ECE = Σ_b (|b|/n)·|acc_b − conf_b|`` (Guo et al., 2017); bins are ``(lo, hi]`` so a
  confidence of exactly 1 falls in the last bin.

  Args:
    probs: softmax probabilities, shape ``(n, classes)``.
    labels: integer labels, shape ``(n,)``.
    num_bins: number of equal-width confidence bins on ``[0, 1]``.

  Returns:
    The ECE as a fraction in ``[0, 1]``.
  """
  probs = np.asarray(probs, dtype=np.float64)
  confidence = probs.max(axis=-1)
  correct = (probs.argmax(axis=-1) == np.asarray(labels)).astype(np.float64)
  inner_edges = np.linspace(0.0, 1.0, num_bins + 1)[1:-1]
  bins = np.digitize(confidence, inner_edges, right=True)
  # (|b|/n)·|acc_b − conf_b| equals |Σ_b correct − Σ_b confidence| / n.
  correct_sum = np.bincount(bins, weights=correct, minlength=num_bins)
  confidence_sum = np.bincount(bins, weights=confidence, minlength=num_bins)
  return float(np.abs(correct_sum - confidence_sum).sum() / confidence.shape[0])


def finite_or_none(value) -> float | None:
  """``value`` as a float, or None where it is NaN or infinite: JSON holds no NaN."""
  value = float(value)
  return value if math.isfinite(value) else None


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
  """Mean over examples of ``Σ_k (p_k − 1[k = label])²``: 0 for certain and right, at most 2.

  A proper scoring rule (Brier, 1950): like the NLL it rewards honest probabilities, but a
  confident mistake costs at most 2 instead of an unbounded ``−log p``.
  """
  probs = np.asarray(probs, dtype=np.float64)
  one_hot = np.eye(probs.shape[-1])[np.asarray(labels)]
  return float(np.mean(np.sum((probs - one_hot) ** 2, axis=-1)))


def classification_scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """Accuracy, error, NLL, ECE and Brier score of predictive ``probs`` ``(n, classes)``."""
  accuracy_value = accuracy(probs, labels)
  return {
    "accuracy": accuracy_value,
    "error": 1.0 - accuracy_value,
    "nll": negative_log_likelihood(probs, labels),
    "ece": expected_calibration_error(probs, labels),
    "brier": brier_score(probs, labels),
  }


def gaussian_fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance of ``features``, one example per row.

  Args:
    features: shape ``(n, d)``, ``n >= 2``.

  Returns:
    ``(mean, covariance)`` of shapes ``(d,)`` and ``(d, d)``; the covariance is the unbiased
    estimate (divided by ``n − 1``), as ``np.cov``.
  """
  features = np.asarray(features)
  return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
  """The Fréchet (2-Wasserstein) distance between two Gaussians, as used by FID.

  ``|mu1 - mu2|^2 + tr(cov1) + tr(cov2) - 2 tr((cov1 cov2)^{1/2})``, with the
  last trace taken as ``tr((S cov2 S)^{1/2})``, ``S = cov1^{1/2}``: the same
  eigenvalues, but of a symmetric positive semi-definite matrix, so they are
  real and non-negative and no complex square root (as ``scipy.linalg.sqrtm``
  of the non-symmetric product can return) has to be discarded.

  Args:
    mu1: mean ``(d,)`` (a scalar for d = 1).
    cov1: covariance ``(d, d)`` (a scalar variance for d = 1).
    mu2: mean of the second Gaussian.
    cov2: covariance of the second Gaussian.

  Returns:
    The squared distance, a non-negative float.

  Raises:
    ValueError: the means' and covariances' shapes do not match.
  """
  mu1, mu2 = (np.atleast_1d(np.asarray(mu, np.float64)) for mu in (mu1, mu2))
  cov1, cov2 = (np.atleast_2d(np.asarray(cov, np.float64)) for cov in (cov1, cov2))
  if not mu1.shape == mu2.shape == cov1.shape[:1] == cov2.shape[:1] or cov1.shape != cov2.shape:
    raise ValueError(
      f"shapes do not match: means {mu1.shape}, {mu2.shape}; covariances {cov1.shape}, {cov2.shape}"
    )
  root1 = _psd_sqrt(cov1)
  product = root1 @ cov2 @ root1
  eigenvalues = np.linalg.eigvalsh((product + product.T) / 2)
  trace_sqrt = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
  distance = np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt
  # Rounding can take equal Gaussians a hair below zero.
  return max(float(distance), 0.0)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  # The symmetric square root; eigenvalues a hair below zero from rounding count as zero.
  eigenvalues, vectors = np.linalg.eigh(matrix)
  return (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ vectors.T


class SeedStatistic(TypedDict):
  """A score over seeds: mean, sample standard deviation, standard error of the mean, count.

  ``std`` and ``se`` are None below two values (one value measures no spread), and every field
  but ``n`` is None without any value.
  """

  mean: float | None
  std: float | None
  se: float | None
  n: int


def seed_statistic(values: Sequence[float | None]) -> SeedStatistic:
  """The :class:`SeedStatistic` of the finite ``values`` (None, NaN and ±inf are left out).

  The standard deviation is the sample one (``ddof = 1``), the unbiased variance's root: with
  three seeds the population one (``ddof = 0``) understates the spread by a factor √(2/3).
  """
  present = np.array([np.nan if v is None else v for v in values], np.float64)
  present = present[np.isfinite(present)]
  if present.size == 0:
    return SeedStatistic(mean=None, std=None, se=None, n=0)
  if present.size == 1:
    return SeedStatistic(mean=float(present[0]), std=None, se=None, n=1)
  std = float(present.std(ddof=1))
  return SeedStatistic(mean=float(present.mean()), std=std, se=std / math.sqrt(present.size),
                       n=int(present.size))  # fmt: skip


def paired_difference(
  values: Sequence[float | None], baseline: Sequence[float | None]
) -> SeedStatistic:
  """:func:`seed_statistic` of ``values[i] − baseline[i]``, over the seeds where both are finite.

  Runs of two methods that share each seed's initial parameters and data order differ by the
  method and by little else, so their per-seed differences vary far less than either score:
  the paired comparison's standard error is the honest one for "which is better".

  Raises:
    ValueError: the two sequences differ in length (they must be the same seeds, in order).
  """
  if len(values) != len(baseline):
    raise ValueError(f"paired scores need the same seeds: {len(values)} against {len(baseline)}")
  differences = [
    None if v is None or b is None else float(v) - float(b) for v, b in zip(values, baseline)
  ]
  return seed_statistic(differences)


def significant(difference: SeedStatistic, confidence: float = 0.95) -> bool | None:
  """Whether a paired difference's mean is away from 0 by Student's two-sided t-test.

  ``|mean| > t_{(1 + confidence)/2, n − 1} · se``; None (undecidable) below two seeds or where
  the differences do not vary at all.
  """
  if difference["n"] < 2 or not difference["se"]:
    return None
  quantile = scipy.stats.t.ppf((1 + confidence) / 2, difference["n"] - 1)
  return bool(abs(difference["mean"]) > quantile * difference["se"])
