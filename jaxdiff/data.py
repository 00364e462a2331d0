"""Whole-split image data sets as uint8 NHWC arrays, from TFDS or local files.

One entry point, :func:`load_dataset`, returns a :class:`Dataset` holding the
train and test splits in host memory. MNIST and CIFAR-10 are small enough to
live whole in device memory, so the training engine copies them to the devices
once and shuffles and gathers batches there (see ``jaxdiff.engine``).

Sources:

* ``"tfds"`` (the default for users with a network): ``tfds.data_source`` for
  ``mnist`` or ``cifar10``, prepared under ``data_dir`` the first time. TFDS is
  imported lazily, so local-file runs work where it is not installed.
* a path to a ``.npz`` with ``x_train, y_train, x_test, y_test``;
* a path to an image-folder tree ``root/{train,test}/<class>/*.{png,jpg}``;
* the same tree inside a ``.tar.gz``/``.tgz``/``.tar`` archive.

Decoded image trees and archives are cached as ``.npz`` under ``cache_dir``
(default ``$JAXDIFF_CACHE`` or ``~/.cache/jaxdiff``), keyed by the source's
resolved path, so sources of the same name in different folders each keep
their own, and by its files' sizes and modification times, so a changed source
is decoded afresh (and its stale cache deleted).

A :class:`Dataset` records its provenance: ``lossy`` says whether any image was
decoded from a lossy format (JPEG), and ``label`` is how reports name the data,
e.g. ``"CIFAR-10 (JPEG copy)"``, so a result on a degraded copy is never passed
off as one on the original.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import logging
import os
import shutil
import socket
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from jaxdiff.files import write_npz

KNOWN_CLASS_NAMES: dict[str, tuple[str, ...]] = {
  "mnist": tuple(str(digit) for digit in range(10)),
  "cifar10": (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
  ),
}
# How reports name the known data sets.
DISPLAY_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# PIL's names of the lossy formats an image tree may hold; camera JPEGs can open as MPO.
LOSSY_FORMATS = ("JPEG", "MPO")
# Part of every cache file's name: bump it when what a cache file holds changes, so that
# caches written by an older jaxdiff are decoded afresh (2: the ``lossy`` flag).
CACHE_VERSION = 2
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
SPLITS = ("train", "test")
# Where TFDS downloads each known data set from: a data set not yet prepared is fetched only if
# its host answers within REACHABLE_TIMEOUT_S, so that a machine without a network fails at once
# rather than after TFDS's retries.
DOWNLOAD_HOSTS = {"mnist": "storage.googleapis.com", "cifar10": "www.cs.toronto.edu"}
REACHABLE_TIMEOUT_S = 3.0
LOCAL_COPIES = {"mnist": "mnist.npz", "cifar10": "cifar10.tar.gz"}
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


class DataError(Exception):
  """Base class of every data-loading error; its message says what to do."""


class DataNotFoundError(DataError, FileNotFoundError):
  """The given path does not exist."""


class UnknownDatasetError(DataError, ValueError):
  """A TFDS name jaxdiff does not know, or a file type it cannot read."""


class CorruptDataError(DataError):
  """An archive, array file or image that cannot be read."""


class EmptyDatasetError(DataError):
  """A source with no images (or a split with none)."""


class InconsistentImagesError(DataError):
  """Images of different sizes or channel counts in one data set."""


class TFDSUnavailableError(DataError):
  """TFDS is not installed or could not download and prepare the data set."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Both splits of an image classification data set, in host memory.

  Attributes:
    name: data set name (``mnist``, ``cifar10`` or the file's stem).
    x_train: uint8 images, shape ``(N, H, W, C)``.
    y_train: int32 labels in ``[0, num_classes)``, shape ``(N,)``.
    x_test: uint8 images, shape ``(M, H, W, C)``.
    y_test: int32 labels, shape ``(M,)``.
    class_names: one name per label value, in label order.
    source: where the arrays came from (``tfds:<name>`` or a path).
    lossy: whether any image was decoded from a lossy format (JPEG), so the
      pixels differ from the original data set's; False for TFDS and ``.npz``.
  """

  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  class_names: tuple[str, ...]
  source: str
  lossy: bool = False

  @property
  def label(self) -> str:
    """How reports name the data.

    ``"CIFAR-10"`` or ``"MNIST"`` from TFDS; ``"<Name> (JPEG copy)"`` for a lossy
    local copy (``"CIFAR-10 (JPEG copy)"`` for the shared ``cifar10-jpeg.tar.gz``);
    ``"<name> (local copy)"`` for a lossless one.
    """
    if self.source.startswith("tfds:"):
      return DISPLAY_NAMES.get(self.name, self.name)
    if self.lossy:
      known = self._copy_of()
      return f"{DISPLAY_NAMES[known] if known else self.name} (JPEG copy)"
    return f"{self.name} (local copy)"

  def _copy_of(self) -> str | None:
    # The known data set this is a copy of, by its name or by its class names. Only
    # CIFAR-10's class names are its own: ten digit classes could be any digits.
    if self.name in KNOWN_CLASS_NAMES:
      return self.name
    if self.class_names == KNOWN_CLASS_NAMES["cifar10"]:
      return "cifar10"
    return None

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.x_train.shape[1:])

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def take_train(self, indices: np.ndarray) -> Dataset:
    """Returns a copy whose training split is ``x_train[indices]``."""
    return dataclasses.replace(self, x_train=self.x_train[indices], y_train=self.y_train[indices])


def default_cache_dir() -> Path:
  return Path(os.environ.get("JAXDIFF_CACHE", Path.home() / ".cache" / "jaxdiff"))


def load_dataset(
  source: str | os.PathLike = "tfds",
  *,
  name: str | None = None,
  data_dir: str | os.PathLike | None = None,
  cache_dir: str | os.PathLike | None = None,
) -> Dataset:
  """Loads the train and test splits of an image data set.

  Args:
    source: ``"tfds"`` or a path to a ``.npz`` file, an image-folder tree or
      a ``.tar.gz``/``.tgz``/``.tar`` archive of one.
    name: the TFDS name (``mnist`` or ``cifar10``), required with ``"tfds"``.
      With a local source it picks the class names when the source has none
      of its own (a ``.npz``); otherwise the file's stem is used.
    data_dir: where TFDS keeps prepared data (TFDS's default if ``None``).
    cache_dir: where decoded image trees are cached; see the module docstring.

  Returns:
    A :class:`Dataset` with uint8 NHWC images and int32 labels.

  Raises:
    DataError: one of its subclasses, with a message saying what to do.

  Example:
    >>> from jaxdiff.files import write_npz
    >>> images, labels = np.zeros((4, 28, 28, 1), np.uint8), np.arange(4, dtype=np.int32)
    >>> write_npz("mnist.npz", x_train=images, y_train=labels, x_test=images, y_test=labels)
    >>> data = load_dataset("mnist.npz", name="mnist")
    >>> data.x_train.shape, data.num_classes, data.label
    ((4, 28, 28, 1), 10, 'mnist (local copy)')
  """
  if str(source) == "tfds":
    if name is None:
      raise UnknownDatasetError(
        "with source 'tfds' pass name= one of: " + ", ".join(KNOWN_CLASS_NAMES)
      )
    return _load_tfds(name, data_dir)
  if name is not None and name not in KNOWN_CLASS_NAMES:
    raise UnknownDatasetError(
      f"unknown dataset name {name!r}; known: {', '.join(KNOWN_CLASS_NAMES)}"
    )
  path = Path(source).expanduser()
  if not path.exists():
    raise DataNotFoundError(
      f"data path {str(path)!r} does not exist; pass 'tfds' or an existing "
      ".npz, image folder or .tar.gz"
    )
  cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
  if path.is_dir():
    return _load_cached(path, cache, lambda: _decode_tree(path), name)
  suffix = "".join(path.suffixes[-2:]).lower()
  if path.suffix.lower() == ".npz":
    return _load_npz(path, name)
  if suffix.endswith(ARCHIVE_SUFFIXES):
    return _load_cached(path, cache, lambda: _decode_archive(path), name)
  raise UnknownDatasetError(
    f"cannot read {str(path)!r}: expected a .npz, an image folder or a "
    f"{'/'.join(ARCHIVE_SUFFIXES)} archive"
  )


def _dataset_name(path: Path, name: str | None) -> str:
  if name is not None:
    return name
  stem = path.name
  for suffix in (".npz",) + ARCHIVE_SUFFIXES:
    stem = stem.removesuffix(suffix)
  return stem


# --------------------------------------------------------------------- TFDS


def _load_tfds(name: str, data_dir: str | os.PathLike | None) -> Dataset:
  if name not in KNOWN_CLASS_NAMES:
    raise UnknownDatasetError(
      f"unknown TFDS dataset {name!r}; known: {', '.join(KNOWN_CLASS_NAMES)}"
    )
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise TFDSUnavailableError(
      f"tensorflow-datasets is not installed ({error}); install it or {_local_advice(name)}"
    ) from error
  try:  # prepared before (or mocked): no network needed
    with _quiet("absl"):  # a data set not prepared yet logs a warning about its missing files
      splits = {s: tfds.data_source(name, split=s, data_dir=data_dir, download=False)
                for s in SPLITS}  # fmt: skip
  except (OSError, RuntimeError, ValueError, AssertionError, KeyError):
    # Not prepared there: TFDS says so in several ways, none of them a class of its own.
    splits = _download_and_prepare(tfds, name, data_dir)
  arrays = {split: _stack_examples(source) for split, source in splits.items()}
  return _validated(name, arrays["train"], arrays["test"], KNOWN_CLASS_NAMES[name], f"tfds:{name}")


def _download_and_prepare(tfds, name: str, data_dir: str | os.PathLike | None) -> dict:
  """Downloads and prepares ``name`` with TFDS, failing at once without a network.

  What TFDS made of a download that failed (the data set's folder, the downloads folder, where
  they did not exist before) is removed, so that nothing half-made is left behind.
  """
  host = DOWNLOAD_HOSTS[name]
  try:
    socket.create_connection((host, 443), timeout=REACHABLE_TIMEOUT_S).close()
  except OSError as error:
    raise TFDSUnavailableError(
      f"cannot download {name!r}: {host} is unreachable ({type(error).__name__}: {error}); "
      f"{_local_advice(name)}"
    ) from error
  root = Path(tfds.builder(name, data_dir=data_dir).data_dir).parents[1]
  made = [path for path in (root / name, root / "downloads") if not path.exists()]
  try:
    return {split: tfds.data_source(name, split=split, data_dir=data_dir) for split in SPLITS}
  except (OSError, ImportError, RuntimeError) as error:
    # A dropped connection raises requests' ConnectionError (an OSError); a missing TensorFlow,
    # needed only to prepare, raises ImportError.
    for path in made:
      shutil.rmtree(path, ignore_errors=True)
    reason = " ".join(str(error).split())
    raise TFDSUnavailableError(
      f"TFDS could not download and prepare {name!r} ({type(error).__name__}: {reason}); "
      f"{_local_advice(name)}"
    ) from error


@contextlib.contextmanager
def _quiet(logger_name: str):
  """Hides the warnings of the logger ``logger_name`` while the block runs."""
  logger = logging.getLogger(logger_name)
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def _local_advice(name: str) -> str:
  return (
    f"pass a local copy instead, e.g. --data path/to/{LOCAL_COPIES[name]} (a .npz with x_train, "
    "y_train, x_test, y_test; an image folder root/{train,test}/<class>/*.png|jpg; or that "
    "folder as a .tar.gz)"
  )


def _stack_examples(source) -> tuple[np.ndarray, np.ndarray]:
  # Item by item: the array-record source's batched __getitems__ is not
  # supported by tfds.testing.mock_data.
  examples = [source[i] for i in range(len(source))]
  images = np.stack([np.asarray(example["image"]) for example in examples])
  labels = np.asarray([example["label"] for example in examples])
  return images, labels


# ---------------------------------------------------------------------- npz


def _load_npz(path: Path, name: str | None) -> Dataset:
  try:
    with np.load(path, allow_pickle=False) as arrays:
      missing = [key for key in NPZ_KEYS if key not in arrays.files]
      if missing:
        raise CorruptDataError(
          f"{str(path)!r} lacks the arrays {', '.join(missing)}; a .npz data "
          f"set needs {', '.join(NPZ_KEYS)}"
        )
      loaded = {key: arrays[key] for key in NPZ_KEYS}
      stored_names = arrays["class_names"] if "class_names" in arrays.files else None
  except (OSError, ValueError, zlib.error, EOFError, zipfile.BadZipFile) as error:
    raise CorruptDataError(
      f"cannot read {str(path)!r} as .npz ({error}); is the file complete?"
    ) from error
  if stored_names is not None:
    class_names = tuple(str(n) for n in stored_names)
  elif name is not None:
    class_names = KNOWN_CLASS_NAMES[name]
  else:
    num_classes = int(max(loaded["y_train"].max(initial=0), loaded["y_test"].max(initial=0))) + 1
    class_names = tuple(str(label) for label in range(num_classes))
  return _validated(
    _dataset_name(path, name),
    (loaded["x_train"], loaded["y_train"]),
    (loaded["x_test"], loaded["y_test"]),
    class_names,
    str(path),
  )


# ------------------------------------------------------ image trees, cached


def _load_cached(path: Path, cache_dir: Path, decode, name: str | None) -> Dataset:
  """Decodes an image tree once; later loads read the cached arrays."""
  cache_file = _cache_file(path, cache_dir)
  if cache_file.exists():
    with np.load(cache_file, allow_pickle=False) as arrays:
      train = arrays["x_train"], arrays["y_train"]
      test = arrays["x_test"], arrays["y_test"]
      class_names = tuple(str(n) for n in arrays["class_names"])
      lossy = bool(arrays["lossy"])
  else:
    train, test, class_names, lossy = decode()
    _remove_stale(cache_file)
    write_npz(
      cache_file,
      x_train=train[0],
      y_train=train[1],
      x_test=test[0],
      y_test=test[1],
      class_names=np.asarray(class_names),
      lossy=np.asarray(lossy),
    )
  return _validated(_dataset_name(path, name), train, test, class_names, str(path), lossy)


def _cache_file(path: Path, cache_dir: Path) -> Path:
  """``<stem>-<source>-<contents>.npz``: where the decoded arrays of ``path`` are cached.

  ``source`` is a digest of the resolved path, which tells apart sources of the same name;
  ``contents`` one of the cache version and every file's size and mtime under the path, which
  changes with the source (or with what a cache file holds).
  """
  resolved = path.resolve()
  source = hashlib.sha256(str(resolved).encode()).hexdigest()[:16]
  contents = hashlib.sha256(f"v{CACHE_VERSION}".encode())
  files = sorted(p for p in resolved.rglob("*") if p.is_file()) if resolved.is_dir() else [resolved]
  for file in files:
    stat = file.stat()
    relative = file.relative_to(resolved.parent)
    contents.update(f"{relative}:{stat.st_size}:{stat.st_mtime_ns}".encode())
  return cache_dir / f"{_dataset_name(path, None)}-{source}-{contents.hexdigest()[:16]}.npz"


def _remove_stale(cache_file: Path) -> None:
  """Deletes the cache files of the same source with other contents (see :func:`_cache_file`)."""
  source_prefix = cache_file.name.rsplit("-", 1)[0] + "-"
  if cache_file.parent.is_dir():
    for old in cache_file.parent.glob("*.npz"):
      # The same length: the same stem and source, not a longer stem that starts alike.
      if old.name.startswith(source_prefix) and len(old.name) == len(cache_file.name):
        old.unlink(missing_ok=True)


def _decode_tree(root: Path):
  files = [
    (str(p.relative_to(root)), p.read_bytes())
    for p in sorted(root.rglob("*"))
    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
  ]
  return _decode_images(files, str(root))


def _decode_archive(path: Path):
  try:
    # Stream mode: one pass through the gzip stream, no backward seeks.
    with tarfile.open(path, "r|*") as archive:
      files = [
        (member.name, archive.extractfile(member).read())
        for member in archive
        if member.isfile() and member.name.lower().endswith(IMAGE_SUFFIXES)
      ]
  except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
    raise CorruptDataError(
      f"cannot read archive {str(path)!r} ({type(error).__name__}: {error}); is the file complete?"
    ) from error
  return _decode_images(sorted(files), str(path))


def _split_and_class(relative: Path) -> tuple[str, str] | None:
  """``(split, class)`` of ``[top/]{train,test}/<class>/<file>``, else None."""
  parts = relative.parts
  for depth in (0, 1):
    if len(parts) == depth + 3 and parts[depth] in SPLITS:
      return parts[depth], parts[depth + 1]
  return None


def _decode_images(files: list[tuple[str, bytes]], where: str):
  """Decodes ``(relative name, bytes)`` pairs; classes are folder names.

  Returns:
    ``(train, test, class_names, lossy)``: ``(images, labels)`` per split, and whether
    any image was stored in a lossy format (judged by its content, not its name).
  """
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top

  per_split = {split: [] for split in SPLITS}
  lossy = False
  for name, content in files:
    located = _split_and_class(Path(name))
    if located is None:
      continue
    try:
      with Image.open(io.BytesIO(content)) as image:
        lossy = lossy or image.format in LOSSY_FORMATS
        pixels = np.asarray(image.convert("L" if image.mode in ("L", "1") else "RGB"), np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
      raise CorruptDataError(f"cannot decode image {name!r} in {where!r}: {error}") from error
    per_split[located[0]].append((located[1], name, pixels))
  missing = [split for split, items in per_split.items() if not items]
  if missing:
    raise EmptyDatasetError(
      f"no images in {', '.join(missing)}/<class>/ of {where!r}: expected the "
      f"layout [top/]{{train,test}}/<class>/*{{{','.join(IMAGE_SUFFIXES)}}}"
    )
  class_names = tuple(sorted({cls for items in per_split.values() for cls, _, _ in items}))
  rgb = any(pixels.ndim == 3 for items in per_split.values() for _, _, pixels in items)
  arrays = []
  for split in SPLITS:
    first_shape, first_name = None, None
    images, labels = [], []
    for cls, name, pixels in per_split[split]:
      pixels = np.repeat(pixels[..., None], 3, -1) if rgb and pixels.ndim == 2 else pixels
      if first_shape is None:
        first_shape, first_name = pixels.shape, name
      elif pixels.shape != first_shape:
        raise InconsistentImagesError(
          f"image {name!r} is {pixels.shape[:2]} but {first_name!r} is "
          f"{first_shape[:2]} in {where!r}; resize them to one size first"
        )
      images.append(pixels)
      labels.append(class_names.index(cls))
    arrays.append((np.stack(images), np.asarray(labels, np.int32)))
  return arrays[0], arrays[1], class_names, lossy


# --------------------------------------------------------------- validation


def _validated(name, train, test, class_names, source, lossy=False) -> Dataset:
  """Checks and normalises arrays to uint8 NHWC images and int32 labels."""
  checked = []
  for split, (images, labels) in zip(SPLITS, (train, test)):
    images = np.asarray(images)
    if images.ndim == 3:
      images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise InconsistentImagesError(
        f"{split} images in {source!r} have shape {images.shape}; expected "
        "(N, H, W) or (N, H, W, C) with C = 1 or 3"
      )
    if images.dtype != np.uint8:
      raise CorruptDataError(
        f"{split} images in {source!r} are {images.dtype}; expected uint8 pixels in [0, 255]"
      )
    if len(images) == 0:
      raise EmptyDatasetError(f"the {split} split of {source!r} has no images")
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(images):
      raise CorruptDataError(
        f"{split} split of {source!r} has {len(images)} images but {len(labels)} labels"
      )
    if labels.min() < 0 or labels.max() >= len(class_names):
      raise CorruptDataError(
        f"{split} labels of {source!r} span [{labels.min()}, {labels.max()}] "
        f"but there are {len(class_names)} classes"
      )
    checked.append((images, labels.astype(np.int32)))
  if checked[0][0].shape[1:] != checked[1][0].shape[1:]:
    raise InconsistentImagesError(
      f"train images are {checked[0][0].shape[1:]} but test images are "
      f"{checked[1][0].shape[1:]} in {source!r}"
    )
  return Dataset(
    name,
    checked[0][0],
    checked[0][1],
    checked[1][0],
    checked[1][1],
    tuple(class_names),
    source,
    lossy,
  )
