"""Rotated test images for predictive uncertainty under shift."""

import numpy as np
import pytest

from jaxdiff import metrics, shift


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)


def test_quarter_turns_move_pixels_exactly(images):
  np.testing.assert_array_equal(shift.rotate_images(images, 0), images)
  # Counter-clockwise as displayed: np.rot90's direction.
  np.testing.assert_array_equal(shift.rotate_images(images, 90), np.rot90(images, 1, axes=(1, 2)))
  np.testing.assert_array_equal(shift.rotate_images(images, 180), images[:, ::-1, ::-1])
  np.testing.assert_array_equal(shift.rotate_images(images, 270), np.rot90(images, 3, axes=(1, 2)))


def test_a_rotation_turns_a_point_about_the_centre_and_fills_with_zeros():
  image = np.zeros((1, 9, 9, 1), np.float32)
  image[0, 4, 8, 0] = 1.0  # on the right edge of the centre row (centre (4, 4))
  turned = shift.rotate_images(image, 45)[0, ..., 0]
  # 45° counter-clockwise: up and to the right, at (4 − 4/√2, 4 + 4/√2) ≈ (1.17, 6.83).
  row, column = np.unravel_index(np.argmax(turned), turned.shape)
  assert (row, column) == (1, 7)
  # Corners come from outside the image: zero.
  ones = shift.rotate_images(np.ones((1, 9, 9, 1), np.float32), 45)[0, ..., 0]
  assert ones[0, 0] == 0 and ones[4, 4] == 1


def test_uint8_images_stay_uint8_and_in_range(images):
  rotated = shift.rotate_images(images, 33)
  assert rotated.dtype == np.uint8 and rotated.shape == images.shape
  assert rotated.max() <= 255


def test_stack_and_scores_by_angle_round_trip(images):
  labels = np.array([0, 1, 2])
  stacked, stacked_labels = shift.stack_rotations(images, labels, (0, 90))
  assert stacked.shape == (6, 28, 28, 1)
  np.testing.assert_array_equal(stacked[:3], images)
  np.testing.assert_array_equal(stacked_labels, [0, 1, 2, 0, 1, 2])
  probs = np.full((6, 3), 0.1)
  probs[np.arange(3), labels] = 0.8  # right at 0°
  probs[3 + np.arange(3), (labels + 1) % 3] = 0.8  # wrong at 90°
  rows = shift.scores_by_angle(probs, stacked_labels, (0, 90))
  assert [row["angle"] for row in rows] == [0, 90]
  assert rows[0]["accuracy"] == 1.0 and rows[1]["accuracy"] == 0.0
  assert rows[1] == {"angle": 90, **metrics.classification_scores(probs[3:], labels)}
  with pytest.raises(ValueError, match="angles"):
    shift.scores_by_angle(probs[:5], stacked_labels[:5], (0, 90))
