"""The data layer: real offline copies, local formats, cache, TFDS, bad input."""

import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxdiff import data as data_lib
from jaxdiff.data import load_dataset

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MNIST_NPZ = SHARED_DATA / "mnist.npz"
CIFAR_ARCHIVE = SHARED_DATA / "cifar10-jpeg.tar.gz"
needs_mnist = pytest.mark.skipif(not MNIST_NPZ.exists(), reason=f"no offline copy at {MNIST_NPZ}")
needs_cifar = pytest.mark.skipif(
  not CIFAR_ARCHIVE.exists(), reason=f"no offline copy at {CIFAR_ARCHIVE}"
)


@needs_mnist
def test_mnist_npz_loads_real_data():
  data = load_dataset(MNIST_NPZ, name="mnist")
  assert data.x_train.shape == (60000, 28, 28, 1) and data.x_train.dtype == np.uint8
  assert data.x_test.shape == (10000, 28, 28, 1) and data.x_test.dtype == np.uint8
  assert data.y_train.dtype == np.int32 and data.y_train.shape == (60000,)
  assert data.y_train.min() == 0 and data.y_train.max() == 9
  assert data.class_names == tuple("0123456789")
  np.testing.assert_array_equal(data.y_train[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
  # The README's statistics of the lossless copy, to 4 decimals.
  assert abs(data.x_train.mean() / 255 - 0.1307) < 1e-4
  assert not data.lossy and data.label == "mnist (local copy)"


@needs_cifar
def test_cifar_jpeg_archive_loads_real_data(tmp_path):
  data = load_dataset(CIFAR_ARCHIVE, cache_dir=tmp_path)
  assert data.x_train.shape == (50000, 32, 32, 3) and data.x_train.dtype == np.uint8
  assert data.x_test.shape == (10000, 32, 32, 3)
  assert data.class_names == data_lib.KNOWN_CLASS_NAMES["cifar10"]
  np.testing.assert_array_equal(np.bincount(data.y_train), [5000] * 10)
  np.testing.assert_array_equal(np.bincount(data.y_test), [1000] * 10)
  # README: per-channel mean (0.4913, 0.4821, 0.4465).
  np.testing.assert_allclose(
    data.x_train.mean((0, 1, 2)) / 255, [0.4913, 0.4821, 0.4465], atol=2e-4
  )
  assert data.lossy and data.label == "CIFAR-10 (JPEG copy)"
  cached = load_dataset(CIFAR_ARCHIVE, cache_dir=tmp_path)
  np.testing.assert_array_equal(cached.x_test, data.x_test)
  assert cached.lossy and cached.label == "CIFAR-10 (JPEG copy)"


def _write_image(path: Path, size=(4, 5), color=(10, 20, 30), mode="RGB", image_format=None):
  # image_format None: the format follows the suffix, as PIL picks it.
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new(mode, size, color if mode == "RGB" else color[0]).save(path, format=image_format)


def _make_tree(root: Path, classes=("cat", "dog"), per_class=2, size=(4, 5), suffix=".png"):
  for split in ("train", "test"):
    for label, cls in enumerate(classes):
      for i in range(per_class):
        _write_image(root / split / cls / f"{i}{suffix}", size, (label * 100, i, 7))
  return root


def _tar_gz(root: Path, archive: Path, arcname: str) -> Path:
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(root, arcname=arcname)
  return archive


def test_image_folder_tree(tmp_path):
  root = _make_tree(tmp_path / "tree")
  data = load_dataset(root, cache_dir=tmp_path / "cache")
  assert data.class_names == ("cat", "dog")
  assert data.x_train.shape == (4, 5, 4, 3)  # PIL sizes are (width, height)
  np.testing.assert_array_equal(data.y_train, [0, 0, 1, 1])
  np.testing.assert_array_equal(data.x_train[2, 0, 0], [100, 0, 7])
  assert data.name == "tree"


def test_grayscale_tree_gives_one_channel(tmp_path):
  root = tmp_path / "gray"
  for split in ("train", "test"):
    _write_image(root / split / "a" / "0.png", mode="L", color=(42, 0, 0))
  data = load_dataset(root, cache_dir=tmp_path / "cache")
  assert data.x_train.shape == (1, 5, 4, 1) and data.x_train[0, 0, 0, 0] == 42


def test_tar_gz_of_a_tree_with_top_folder(tmp_path):
  root = _make_tree(tmp_path / "tree")
  archive = _tar_gz(root, tmp_path / "images.tar.gz", "images")
  from_archive = load_dataset(archive, cache_dir=tmp_path / "cache")
  from_tree = load_dataset(root, cache_dir=tmp_path / "cache")
  np.testing.assert_array_equal(from_archive.x_train, from_tree.x_train)
  np.testing.assert_array_equal(from_archive.y_test, from_tree.y_test)
  assert from_archive.name == "images"


def test_cache_is_reused_then_invalidated_by_a_change(tmp_path, monkeypatch):
  root = _make_tree(tmp_path / "tree")
  cache = tmp_path / "cache"
  first = load_dataset(root, cache_dir=cache)
  cache_files = list(cache.glob("*.npz"))
  assert len(cache_files) == 1

  def no_decoding(*args):
    raise AssertionError("decoded again although the cache is valid")

  with monkeypatch.context() as patch:
    patch.setattr(data_lib, "_decode_images", no_decoding)
    again = load_dataset(root, cache_dir=cache)
  np.testing.assert_array_equal(again.x_train, first.x_train)

  _write_image(root / "train" / "cat" / "0.png", (4, 5), (255, 255, 255))
  changed = load_dataset(root, cache_dir=cache)
  np.testing.assert_array_equal(changed.x_train[0, 0, 0], [255, 255, 255])
  new_files = list(cache.glob("*.npz"))
  assert len(new_files) == 1 and new_files != cache_files  # the stale file is gone


def test_sources_of_the_same_name_keep_their_own_caches(tmp_path, monkeypatch):
  # Two cifar10.tar.gz in different folders: loading one must not evict the other's cache.
  archives = [
    _tar_gz(_make_tree(tmp_path / folder / "tree", per_class=count), tmp_path / folder /
            "cifar10.tar.gz", "cifar10")
    for folder, count in (("one", 1), ("two", 2))
  ]  # fmt: skip
  cache = tmp_path / "cache"
  first = [load_dataset(archive, cache_dir=cache) for archive in archives]
  assert len(list(cache.glob("cifar10-*.npz"))) == 2

  def no_decoding(*args):
    raise AssertionError("decoded again although the cache is valid")

  with monkeypatch.context() as patch:
    patch.setattr(data_lib, "_decode_images", no_decoding)
    again = [load_dataset(archive, cache_dir=cache) for archive in archives]
  for was, now, count in zip(first, again, (1, 2)):
    assert len(now.x_train) == 2 * count
    np.testing.assert_array_equal(now.x_train, was.x_train)


# ------------------------------------------------------------- provenance


def test_png_tree_is_a_lossless_local_copy(tmp_path):
  data = load_dataset(_make_tree(tmp_path / "tree"), cache_dir=tmp_path / "cache")
  assert not data.lossy and data.label == "tree (local copy)"


def test_jpeg_tree_is_lossy(tmp_path):
  root = _make_tree(tmp_path / "tree", suffix=".jpg")
  data = load_dataset(root, cache_dir=tmp_path / "cache")
  assert data.lossy and data.label == "tree (JPEG copy)"


def test_one_jpeg_among_pngs_makes_the_tree_lossy(tmp_path):
  root = _make_tree(tmp_path / "tree")
  _write_image(root / "test" / "dog" / "extra.jpeg")
  assert load_dataset(root, cache_dir=tmp_path / "cache").lossy


def test_lossy_is_judged_by_the_images_not_by_names(tmp_path):
  # PNGs in a folder named like the JPEG copy, with .jpg names: lossless.
  root = tmp_path / "cifar10-jpeg"
  for split in ("train", "test"):
    _write_image(root / split / "cat" / "0.jpg", image_format="PNG")
  data = load_dataset(root, cache_dir=tmp_path / "cache")
  assert not data.lossy and data.label == "cifar10-jpeg (local copy)"
  # A JPEG named .png: lossy.
  other = tmp_path / "plain"
  for split in ("train", "test"):
    _write_image(other / split / "cat" / "0.png", image_format="JPEG")
  assert load_dataset(other, cache_dir=tmp_path / "cache").lossy


def test_jpeg_archive_of_cifar_classes_is_labelled_the_cifar_jpeg_copy(tmp_path):
  classes = data_lib.KNOWN_CLASS_NAMES["cifar10"]
  root = _make_tree(tmp_path / "tree", classes=classes, per_class=1, size=(2, 2), suffix=".jpg")
  # The shared archive's layout, loaded as the experiments do: without a name.
  archive = _tar_gz(root, tmp_path / "cifar10-jpeg.tar.gz", "cifar10-jpeg")
  data = load_dataset(archive, cache_dir=tmp_path / "cache")
  assert data.lossy and data.label == "CIFAR-10 (JPEG copy)"
  # JPEGs of other classes keep their own name.
  other = _tar_gz(_make_tree(tmp_path / "pets", suffix=".jpg"), tmp_path / "pets.tgz", "pets")
  assert load_dataset(other, cache_dir=tmp_path / "cache").label == "pets (JPEG copy)"


def test_png_archive_is_lossless(tmp_path):
  archive = _tar_gz(_make_tree(tmp_path / "tree"), tmp_path / "images.tar.gz", "images")
  data = load_dataset(archive, cache_dir=tmp_path / "cache")
  assert not data.lossy and data.label == "images (local copy)"


def test_lossy_survives_the_cache(tmp_path, monkeypatch):
  root = _make_tree(tmp_path / "tree", suffix=".jpg")
  cache = tmp_path / "cache"
  first = load_dataset(root, cache_dir=cache)

  def no_decoding(*args):
    raise AssertionError("decoded again although the cache is valid")

  monkeypatch.setattr(data_lib, "_decode_images", no_decoding)
  again = load_dataset(root, cache_dir=cache)
  assert first.lossy and again.lossy and again.label == first.label == "tree (JPEG copy)"


def test_a_cache_of_an_older_version_is_decoded_afresh(tmp_path, monkeypatch):
  root = _make_tree(tmp_path / "tree", suffix=".jpg")
  cache = tmp_path / "cache"
  # What an older jaxdiff left: the arrays without the lossy flag, under its version.
  with monkeypatch.context() as patch:
    patch.setattr(data_lib, "CACHE_VERSION", data_lib.CACHE_VERSION - 1)
    old_file = data_lib._cache_file(root, cache)
  cache.mkdir()
  images = np.zeros((1, 5, 4, 3), np.uint8)
  np.savez(old_file, x_train=images, y_train=[0], x_test=images, y_test=[0], class_names=["a"])
  data = load_dataset(root, cache_dir=cache)
  assert data.lossy and data.class_names == ("cat", "dog")
  remaining = list(cache.glob("*.npz"))
  assert len(remaining) == 1 and remaining != [old_file]  # the old file is gone


def test_npz_is_lossless(tmp_path):
  path = tmp_path / "digits.npz"
  images = np.zeros((3, 2, 2), np.uint8)
  np.savez(path, x_train=images, y_train=[0, 2, 1], x_test=images[:1], y_test=[1])
  data = load_dataset(path)
  assert not data.lossy and data.label == "digits (local copy)"
  assert load_dataset(path, name="mnist").label == "mnist (local copy)"


def test_dataset_built_positionally_defaults_to_lossless_and_take_train_keeps_the_flag():
  images, labels = np.zeros((4, 2, 2, 1), np.uint8), np.arange(4, dtype=np.int32) % 2
  plain = data_lib.Dataset("toy", images, labels, images, labels, ("a", "b"), "synthetic")
  assert not plain.lossy and plain.label == "toy (local copy)"
  lossy = data_lib.Dataset("toy", images, labels, images, labels, ("a", "b"), "x.tgz", True)
  subset = lossy.take_train(np.array([0, 1]))
  assert subset.lossy and subset.x_train.shape[0] == 2 and subset.label == "toy (JPEG copy)"


def test_npz_without_class_names_numbers_the_labels(tmp_path):
  path = tmp_path / "digits.npz"
  images = np.zeros((3, 2, 2), np.uint8)
  np.savez(path, x_train=images, y_train=[0, 2, 1], x_test=images[:1], y_test=[1])
  data = load_dataset(path)
  assert data.class_names == ("0", "1", "2") and data.x_train.shape == (3, 2, 2, 1)


# ------------------------------------------------------------------ TFDS


@pytest.mark.parametrize(
  "name,shape,label", [("mnist", (28, 28, 1), "MNIST"), ("cifar10", (32, 32, 3), "CIFAR-10")]
)
def test_tfds_source_with_mock_data(name, shape, label):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=6):
    data = load_dataset("tfds", name=name)
  assert data.x_train.shape == (6,) + shape and data.x_train.dtype == np.uint8
  assert data.y_train.dtype == np.int32 and data.y_train.max() < 10
  assert data.class_names == data_lib.KNOWN_CLASS_NAMES[name]
  assert data.source == f"tfds:{name}"
  assert not data.lossy and data.label == label


def test_tfds_unreachable_says_how_to_pass_a_local_file(monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  import requests

  def offline(*args, **kwargs):
    raise requests.exceptions.ConnectionError("Failed to resolve 'storage.googleapis.com'")

  monkeypatch.setattr(tfds, "data_source", offline)
  with pytest.raises(data_lib.TFDSUnavailableError, match="pass a local copy"):
    load_dataset("tfds", name="mnist")


def test_without_a_network_tfds_fails_at_once_in_one_line_and_leaves_nothing(monkeypatch, tmp_path):
  pytest.importorskip("tensorflow_datasets")
  import socket
  import time

  def no_network(address, timeout=None):
    raise OSError(101, "Network is unreachable")

  monkeypatch.setattr(socket, "create_connection", no_network)
  started = time.perf_counter()
  with pytest.raises(data_lib.TFDSUnavailableError) as raised:
    load_dataset("tfds", name="cifar10", data_dir=tmp_path / "tfds")
  assert time.perf_counter() - started < 10  # TFDS's own retries took minutes
  message = str(raised.value)
  assert "\n" not in message and "www.cs.toronto.edu is unreachable" in message
  assert "--data path/to/cifar10.tar.gz" in message and "root/{train,test}/<class>" in message
  assert not (tmp_path / "tfds").exists()


def test_a_download_that_fails_midway_removes_what_it_made(monkeypatch, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  import socket

  import requests

  class Reachable:
    def close(self):
      pass

  monkeypatch.setattr(socket, "create_connection", lambda address, timeout=None: Reachable())
  root = tmp_path / "tfds"

  def download_then_drop(name, split, data_dir, download=True):
    if not download:
      raise NotImplementedError("not prepared")
    (root / name / "3.0.1.incomplete").mkdir(parents=True)
    (root / "downloads").mkdir(exist_ok=True)
    raise requests.exceptions.ConnectionError("Connection reset by peer\nwhile reading")

  monkeypatch.setattr(tfds, "data_source", download_then_drop)
  with pytest.raises(data_lib.TFDSUnavailableError, match="Connection reset by peer while"):
    load_dataset("tfds", name="mnist", data_dir=root)
  assert not (root / "mnist").exists() and not (root / "downloads").exists()


# ------------------------------------------------------------- bad input


def test_missing_path(tmp_path):
  with pytest.raises(data_lib.DataNotFoundError, match="does not exist"):
    load_dataset(tmp_path / "nope.npz")


def test_unknown_dataset_name_and_file_type(tmp_path):
  with pytest.raises(data_lib.UnknownDatasetError, match="unknown"):
    load_dataset("tfds", name="imagenet")
  with pytest.raises(data_lib.UnknownDatasetError, match="name="):
    load_dataset("tfds")
  text = tmp_path / "data.txt"
  text.write_text("hello")
  with pytest.raises(data_lib.UnknownDatasetError, match="cannot read"):
    load_dataset(text)


def test_corrupt_archive(tmp_path):
  root = _make_tree(tmp_path / "tree")
  archive = tmp_path / "cut.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(root, arcname="cut")
  archive.write_bytes(archive.read_bytes()[:60])
  with pytest.raises(data_lib.CorruptDataError, match="cannot read archive"):
    load_dataset(archive, cache_dir=tmp_path / "cache")
  not_gzip = tmp_path / "junk.tgz"
  not_gzip.write_bytes(b"definitely not an archive" * 40)
  with pytest.raises(data_lib.CorruptDataError):
    load_dataset(not_gzip, cache_dir=tmp_path / "cache")


def test_corrupt_npz_and_missing_arrays(tmp_path):
  junk = tmp_path / "junk.npz"
  junk.write_bytes(b"PK\x03\x04 broken")
  with pytest.raises(data_lib.CorruptDataError, match="cannot read"):
    load_dataset(junk)
  partial = tmp_path / "partial.npz"
  np.savez(partial, x_train=np.zeros((1, 2, 2), np.uint8), y_train=[0])
  with pytest.raises(data_lib.CorruptDataError, match="x_test, y_test"):
    load_dataset(partial)


def test_corrupt_image_in_tree(tmp_path):
  root = _make_tree(tmp_path / "tree")
  (root / "test" / "dog" / "bad.jpg").write_bytes(b"not a jpeg")
  with pytest.raises(data_lib.CorruptDataError, match="bad.jpg"):
    load_dataset(root, cache_dir=tmp_path / "cache")


def test_tree_without_images(tmp_path):
  (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
  (tmp_path / "empty" / "train" / "cat" / "notes.txt").write_text("no images")
  with pytest.raises(data_lib.EmptyDatasetError, match="no images"):
    load_dataset(tmp_path / "empty", cache_dir=tmp_path / "cache")


def test_inconsistent_image_sizes(tmp_path):
  root = _make_tree(tmp_path / "tree")
  _write_image(root / "train" / "dog" / "big.png", size=(8, 8))
  with pytest.raises(data_lib.InconsistentImagesError, match="big.png"):
    load_dataset(root, cache_dir=tmp_path / "cache")


def test_errors_share_one_base_class():
  for error in (
    data_lib.DataNotFoundError,
    data_lib.CorruptDataError,
    data_lib.EmptyDatasetError,
    data_lib.InconsistentImagesError,
    data_lib.UnknownDatasetError,
    data_lib.TFDSUnavailableError,
  ):
    assert issubclass(error, data_lib.DataError)
