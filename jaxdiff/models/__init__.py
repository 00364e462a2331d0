"""Flax Linen models."""

from jaxdiff.models.cnn import SimpleCNN, normalize_images
from jaxdiff.models.mlp import MLP
from jaxdiff.models.unet import UNET_SIZES, UNet, make_unet

__all__ = ["MLP", "UNET_SIZES", "SimpleCNN", "UNet", "make_unet", "normalize_images"]
