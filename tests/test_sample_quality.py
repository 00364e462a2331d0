"""Sample-quality metrics: the Fréchet distance, the cached MNIST classifier, the scores."""

from pathlib import Path

import jax
import numpy as np
import pytest
import scipy.linalg

from jaxdiff import sample_quality
from jaxdiff.data import load_dataset
from jaxdiff.metrics import frechet_distance, gaussian_fit
from jaxdiff.sample_quality import evaluate_samples, train_feature_classifier

MNIST_NPZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist.npz"
TRAIN_IMAGES = 2000
EPOCHS = 2


def _random_gaussian(rng, dim, samples):
  features = rng.normal(size=(samples, dim)) @ rng.normal(size=(dim, dim))
  return features.mean(0) + rng.normal(size=dim), np.cov(features, rowvar=False)


# ------------------------------------------------------------ Fréchet distance


def test_frechet_distance_of_1d_gaussians():
  # (mu1 - mu2)^2 + s1^2 + s2^2 - 2 s1 s2 = 9 + 4 + 9 - 12
  assert frechet_distance(1.0, 4.0, -2.0, 9.0) == pytest.approx(10.0, abs=1e-12)


def test_frechet_distance_of_identical_gaussians_is_zero():
  mu, cov = _random_gaussian(np.random.default_rng(0), 6, 50)
  assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_of_diagonal_gaussians():
  mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, -1.0])
  var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
  got = frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
  assert got == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_matches_scipy_sqrtm_of_the_product():
  rng = np.random.default_rng(1)
  (mu1, cov1), (mu2, cov2) = _random_gaussian(rng, 8, 100), _random_gaussian(rng, 8, 100)
  trace_sqrt = np.trace(scipy.linalg.sqrtm(cov1 @ cov2)).real  # the usual FID formula
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt
  assert frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(expected, rel=1e-9)
  assert frechet_distance(mu2, cov2, mu1, cov1) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_singular_covariances_is_finite():
  rng = np.random.default_rng(2)
  (mu1, cov1), (mu2, cov2) = _random_gaussian(rng, 16, 5), _random_gaussian(rng, 16, 5)
  assert np.linalg.matrix_rank(cov1) < 16  # fewer samples than dimensions, as with few images
  distance = frechet_distance(mu1, cov1, mu2, cov2)
  assert np.isfinite(distance) and distance > 0


def test_frechet_distance_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="shapes do not match"):
    frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


# ------------------------------------------------- classifier on real MNIST


@pytest.fixture(scope="module")
def mnist():
  if not MNIST_NPZ.exists():
    pytest.skip(f"no offline MNIST copy at {MNIST_NPZ}")
  return load_dataset(MNIST_NPZ, name="mnist")


@pytest.fixture(scope="module")
def small_mnist(mnist):
  return mnist.take_train(np.arange(TRAIN_IMAGES))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("mnist_classifier")


@pytest.fixture(scope="module")
def classifier(small_mnist, cache_dir):
  return train_feature_classifier(
    small_mnist, jax.random.key(0), epochs=EPOCHS, batch_size=128, cache_dir=cache_dir
  )


@pytest.fixture
def trainer_must_not_run(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("trained although a cached classifier should have been used")

  monkeypatch.setattr(sample_quality, "Trainer", fail)


def test_classifier_beats_chance_on_held_out_images(mnist, classifier):
  probs, features = sample_quality._probs_and_features(classifier, mnist.x_test[:1000], 500)
  accuracy = np.mean(probs.argmax(1) == mnist.y_test[:1000])
  # Chance is 0.1; 30 Adam steps on 2000 images reached 0.88 when this was written.
  assert accuracy > 0.5
  assert features.shape == (1000, 128)


def test_second_call_loads_the_cache(small_mnist, classifier, cache_dir, trainer_must_not_run):
  loaded = train_feature_classifier(
    small_mnist, jax.random.key(0), epochs=EPOCHS, batch_size=128, cache_dir=cache_dir
  )
  assert jax.tree.structure(loaded) == jax.tree.structure(classifier)
  for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(classifier)):
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
  assert [path.suffix for path in cache_dir.iterdir()] == [".npz"]  # no temporary file left


def test_cache_is_keyed_by_data_and_settings(
  small_mnist, classifier, cache_dir, trainer_must_not_run
):
  relabelled = small_mnist.take_train(np.arange(TRAIN_IMAGES))
  relabelled.y_train[0] = (relabelled.y_train[0] + 1) % 10
  for data, epochs in ((relabelled, EPOCHS), (small_mnist, EPOCHS + 1)):
    with pytest.raises(AssertionError, match="trained although"):
      train_feature_classifier(data, jax.random.key(0), epochs=epochs, cache_dir=cache_dir)


def test_real_images_score_far_better_than_noise(mnist, classifier):
  real, reference = mnist.x_test[:1000], mnist.x_test[5000:6000]
  noise = np.random.default_rng(0).integers(0, 256, real.shape, dtype=np.uint8)
  real_scores = evaluate_samples(classifier, real, reference)
  noise_scores = evaluate_samples(classifier, noise, reference)
  assert "NOT comparable" in real_scores["note"]
  assert real_scores["num_samples"] == 1000 and real_scores["num_reference"] == 1000
  assert sum(real_scores["class_histogram"]) == 1000 and len(real_scores["class_histogram"]) == 10
  # Two halves of the test set differ by sampling noise only; uniform noise is
  # far off the digit manifold (about 17 vs 900 when this was written).
  assert real_scores["classifier_fd"] * 10 < noise_scores["classifier_fd"]
  # A lightly trained classifier is sure of most real digits (0.66 when written).
  assert real_scores["confident_share"] > 0.5
  # Real digits spread over the classes; noise lands in a few.
  assert max(real_scores["class_histogram"]) < 200 < max(noise_scores["class_histogram"])


def test_evaluate_samples_rejects_float_images():
  images = np.zeros((4, 28, 28, 1), np.float32)
  with pytest.raises(ValueError, match="uint8"):
    evaluate_samples(None, images, images.astype(np.uint8))  # checked before any parameter is used


def test_conditional_scores_check_each_sample_against_the_digit_asked_for(mnist, classifier):
  images, labels = mnist.x_test[:600], mnist.y_test[:600]
  reference, reference_labels = mnist.x_test[5000:6000], mnist.y_test[5000:6000]
  scores = sample_quality.evaluate_conditional_samples(classifier, images, labels, reference,
                                                       reference_labels)  # fmt: skip
  # The unconditional scores are evaluate_samples', and real digits asked for as what they are
  # score the classifier's own accuracy.
  plain = evaluate_samples(classifier, images, reference)
  assert {key: scores[key] for key in plain} == plain
  probs, features = sample_quality._probs_and_features(classifier, images, 500)
  assert scores["class_accuracy"] == np.mean(probs.argmax(1) == labels)
  assert scores["class_accuracy"] > 0.5  # as in test_classifier_beats_chance_on_held_out_images
  assert scores["confident_accurate_share"] <= min(scores["class_accuracy"],
                                                   scores["confident_share"])  # fmt: skip
  per_class = scores["per_class"]
  assert [row["digit"] for row in per_class] == list(range(10))
  assert sum(row["num_samples"] for row in per_class) == 600
  _, reference_features = sample_quality._probs_and_features(classifier, reference, 500)
  sevens = frechet_distance(*gaussian_fit(features[labels == 7]),
                            *gaussian_fit(reference_features[reference_labels == 7]))  # fmt: skip
  assert per_class[7]["classifier_fd"] == pytest.approx(sevens, rel=1e-12)
  # Each digit's real images lie far nearer their own digit's reference than another digit's.
  wrong = sample_quality.evaluate_conditional_samples(classifier, images, (labels + 1) % 10,
                                                      reference, reference_labels)  # fmt: skip
  # A wrong label is hit only where the classifier errs, below 1 - accuracy.
  assert wrong["class_accuracy"] < 1 - scores["class_accuracy"] + 1e-12
  for right_row, wrong_row in zip(per_class, wrong["per_class"]):
    assert right_row["classifier_fd"] * 2 < wrong_row["classifier_fd"]


def test_conditional_scores_leave_out_a_distance_they_cannot_fit(mnist, classifier):
  images, reference = mnist.x_test[:6], mnist.x_test[5000:5100]
  asked = np.array([3, 3, 3, 5, 8, 8])
  scores = sample_quality.evaluate_conditional_samples(classifier, images, asked, reference,
                                                       mnist.y_test[5000:5100])  # fmt: skip
  assert [(row["digit"], row["num_samples"]) for row in scores["per_class"]] == [(3, 3), (5, 1),
                                                                                 (8, 2)]  # fmt: skip
  assert scores["per_class"][1]["classifier_fd"] is None  # one sample has no covariance
  assert np.isfinite(scores["per_class"][2]["classifier_fd"])
  with pytest.raises(ValueError, match="one label per image"):
    sample_quality.evaluate_conditional_samples(classifier, images, asked[:5], reference,
                                                mnist.y_test[5000:5100])  # fmt: skip
