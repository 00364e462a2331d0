"""The DDPM experiment's figures: sample grids, the loss, the denoising row, the guidance
trade-off and the sampler table's previews."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from jaxdiff import ddpm
from jaxdiff.experiments.ddpm_mnist.report import sampler_name
from jaxdiff.files import pyplot, save_figure


def _tile(images: np.ndarray, columns: int) -> np.ndarray:
  """``images`` (N, H, W, C) side by side, ``columns`` a row, each framed by one black pixel."""
  rows = math.ceil(len(images) / columns)
  height, width, channels = images.shape[1:]
  grid = np.zeros((rows * (height + 2), columns * (width + 2), channels), np.uint8)
  for index, image in enumerate(images):
    row, column = divmod(index, columns)
    grid[row * (height + 2) + 1 : row * (height + 2) + 1 + height,
         column * (width + 2) + 1 : column * (width + 2) + 1 + width] = image  # fmt: skip
  return grid.squeeze(-1) if channels == 1 else grid


def sample_grid(samples_uint8: np.ndarray, columns: int = 16) -> np.ndarray:
  """The first ``columns²`` samples tiled ``columns`` a row, as samples.png shows them: uint8
  ``(height, width)`` for grey images, ``(height, width, channels)`` for colour."""
  return _tile(samples_uint8[: columns * columns], columns)


def plot_samples(samples_uint8: np.ndarray, path: Path, columns: int = 16) -> None:
  shown = samples_uint8[: columns * columns]
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(columns * 0.6, math.ceil(len(shown) / columns) * 0.6))
  ax.imshow(sample_grid(shown, columns), cmap="gray", interpolation="nearest")
  ax.set_axis_off()
  ax.set_title("DDPM samples (EMA parameters)")
  save_figure(fig, path)


def plot_loss(losses: list[float], path: Path) -> None:
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(7, 4))
  steps = np.arange(1, len(losses) + 1)
  ax.plot(steps, losses, alpha=0.3, label="per step")
  window = max(1, len(losses) // 50)
  if len(losses) >= window:
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    ax.plot(steps[window - 1 :], smooth, label=f"mean of {window}")
  ax.set_xlabel("step")
  ax.set_ylabel("training loss (weighted MSE)")
  ax.set_yscale("log")
  ax.set_title("DDPM training loss")
  ax.legend()
  save_figure(fig, path)


def plot_denoising(trajectory: np.ndarray, timesteps: tuple[int, ...], path: Path) -> None:
  """One row: the first sample's x_t at each recorded t, from x_T to x_0."""
  plt = pyplot()
  images = ddpm.to_uint8(trajectory[:, 0])
  fig, axes = plt.subplots(1, len(timesteps), figsize=(1.6 * len(timesteps), 2))
  for ax, image, t in zip(axes, images, timesteps):
    ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray")
    ax.set_title(f"t = {t}")
    ax.set_axis_off()
  save_figure(fig, path)


def plot_samples_by_class(
  samples_uint8: np.ndarray, labels: np.ndarray, path: Path, columns: int = 16
) -> None:
  """One row per digit asked for: its first ``columns`` samples."""
  digits, counts = np.unique(labels, return_counts=True)
  columns = min(columns, int(counts.max()))
  height, width, channels = samples_uint8.shape[1:]
  rows = np.zeros((len(digits), columns, height, width, channels), np.uint8)
  for row, digit in zip(rows, digits):
    mine = samples_uint8[labels == digit][:columns]
    row[: len(mine)] = mine
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(columns * 0.6, len(digits) * 0.6))
  ax.imshow(_tile(rows.reshape((-1, height, width, channels)), columns), cmap="gray",
            interpolation="nearest")  # fmt: skip
  ax.set_yticks([(height + 2) * (index + 0.5) for index in range(len(digits))],
                [str(digit) for digit in digits])  # fmt: skip
  ax.set_xticks([])
  ax.set_ylabel("digit asked for")
  ax.set_title("DDPM samples by class (EMA parameters)")
  save_figure(fig, path)


def plot_guidance_tradeoff(rows: list[dict[str, Any]], path: Path) -> None:
  """The guidance sweep: FD against the share of samples that are the digit asked for, one
  point per weight w, joined in order of w."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6, 4.5))
  accuracy = [row["class_accuracy"] for row in rows]
  distance = [row["classifier_fd"] for row in rows]
  ax.plot(accuracy, distance, marker="o")
  for row, x, y in zip(rows, accuracy, distance):
    ax.annotate(f"w = {row['guidance']:g}", (x, y), textcoords="offset points", xytext=(5, 5))
  ax.set_xlabel("share of samples classified as the digit asked for")
  ax.set_ylabel("classifier FD (not comparable to FID)")
  ax.set_title("Classifier-free guidance: class accuracy against FD")
  save_figure(fig, path)


def plot_sampler_previews(
  rows: list[dict[str, Any]], previews: list[np.ndarray], path: Path
) -> None:
  """One line of images per sampler table row (the same initial noise in every line)."""
  plt = pyplot()
  count = len(previews[0])
  fig, axes = plt.subplots(len(rows), 1, figsize=(count * 0.6, len(rows) * 0.9), squeeze=False)
  for ax, row, images in zip(axes[:, 0], rows, previews):
    ax.imshow(_tile(images, count), cmap="gray", interpolation="nearest")
    ax.set_title(sampler_name(row), fontsize=9, loc="left")
    ax.set_axis_off()
  save_figure(fig, path)
