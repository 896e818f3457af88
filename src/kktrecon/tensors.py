"""Tensor helpers that need no training data: NCC distance between image sets, a chunked forward pass.

Neutral ground: the oracle-free sweep (``kktrecon.sweeps.selection``) compares candidates with each
other and reads the victim's outputs on them, and evaluation compares candidates with the training
set the same way. Keeping these helpers outside ``kktrecon.evaluation`` lets the sweep use them
without importing the package that holds the oracle, so it stays oracle-free by construction.

The NCC distance follows the reference protocol of Haim et al. (NeurIPS 2022; the released
``nivha/dataset_reconstruction``, ``evaluations.py``): each image is (optionally) downsampled by
bicubic interpolation (2× for CIFAR-10), standardised per channel, and compared by squared L2
distance divided by the number of entries.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kktrecon.errors import ConfigError

__all__ = ["check_images", "forward_chunked", "ncc_distance"]


def check_images(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] not in (1, 3):
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ConfigError(f"Expected `{name}` to be a (N, C, H, W) tensor with C in (1, 3). Got {shape}.")


def _downsample(x: Tensor, factor: int) -> Tensor:
    if factor == 1:
        return x
    return torch.nn.functional.interpolate(x, scale_factor=1 / factor, mode="bicubic")


def _standardise(x: Tensor) -> Tensor:
    # Per image and channel, with the unbiased std, as the reference's `normalize_batch`. A constant
    # channel has std 0; the floor maps it to zeros instead of NaN.
    flat = x.flatten(2)
    mean = flat.mean(dim=2, keepdim=True)
    std = flat.std(dim=2, keepdim=True).clamp_min(1e-12) if flat.shape[2] > 1 else torch.ones_like(mean)
    return ((flat - mean) / std).flatten(1)


def ncc_distance(a: Tensor, b: Tensor, *, downsample: int = 1) -> Tensor:
    """Pairwise normalised cross-correlation distance between two image sets.

    Each image is (optionally) downsampled by ``downsample`` with bicubic interpolation, standardised
    per channel (minus its mean, divided by its unbiased std), flattened, and compared by squared L2
    distance divided by the number of entries D. For standardised vectors this is ``2(1 - ρ)`` up
    to the (D-1)/D factor of the unbiased std, with ρ the Pearson correlation.

    Args:
        a: images of shape (n, C, H, W).
        b: images of shape (m, C, H, W).
        downsample: integer factor applied to both sets before comparing (1: full resolution).

    Returns:
        Tensor of shape (n, m), float64.

    Example:
        >>> x = torch.rand(3, 1, 8, 8)
        >>> d = ncc_distance(x, x)
        >>> bool((d.diagonal() < 1e-9).all())
        True
    """
    check_images("a", a)
    check_images("b", b)
    _check_downsample(downsample)
    if a.shape[1:] != b.shape[1:]:
        raise ConfigError(f"Expected `a` and `b` to share an image shape. Got {tuple(a.shape)} and {tuple(b.shape)}.")
    a = _standardise(_downsample(a.to(torch.float64), downsample))
    b = _standardise(_downsample(b.to(a.device, torch.float64), downsample))
    dim = a.shape[1]
    dist = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return dist.clamp_min(0.0) / dim


def _check_downsample(downsample: int) -> None:
    if not isinstance(downsample, int) or isinstance(downsample, bool) or downsample < 1:
        raise ConfigError(f"Expected `downsample` to be a positive integer. Got {downsample!r}.")


# Outputs are computed in chunks so that a convolutional victim on a large pool fits in memory.
_FORWARD_CHUNK = 1024


@torch.no_grad()
def forward_chunked(model: torch.nn.Module, x: Tensor) -> Tensor:
    """``model(x)`` in chunks, on the model's device and dtype, returned as float64 on the CPU."""
    param = next(iter(model.parameters()), None)
    if param is not None:
        x = x.to(param.device, param.dtype)
    chunks = [model(x[i : i + _FORWARD_CHUNK]) for i in range(0, x.shape[0], _FORWARD_CHUNK)]
    out = torch.cat(chunks) if chunks else model(x)
    return out.detach().to("cpu", torch.float64)
