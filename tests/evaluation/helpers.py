"""Independent oracles for the evaluation tests: SSIM and NCC in numpy, and synthetic image sets."""

from __future__ import annotations

import math

import numpy as np
import torch

# ----------------------------------------------------------------------------------------------
# Independent oracle (numpy, loops, straight from the definitions)
# ----------------------------------------------------------------------------------------------


def _np_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM map, Gaussian window of 3 taps with sigma 1.5, reflect padding, data range 1."""
    taps = np.exp(-(np.arange(-1, 2) ** 2) / (2 * 1.5**2))
    taps /= taps.sum()
    kernel = np.outer(taps, taps)

    def filt(img: np.ndarray) -> np.ndarray:
        out = np.zeros_like(img)
        for ch in range(img.shape[0]):
            padded = np.pad(img[ch], 1, mode="reflect")
            for dy in range(3):
                for dx in range(3):
                    out[ch] += kernel[dy, dx] * padded[dy : dy + img.shape[1], dx : dx + img.shape[2]]
        return out

    c1, c2 = 0.01**2, 0.03**2
    mu1, mu2 = filt(a), filt(b)
    s11 = filt(a * a) - mu1**2
    s22 = filt(b * b) - mu2**2
    s12 = filt(a * b) - mu1 * mu2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s11 + s22 + c2))
    return float(ssim_map.mean())


def _np_ncc(a: np.ndarray, b: np.ndarray) -> float:
    def std(x: np.ndarray) -> np.ndarray:
        flat = x.reshape(x.shape[0], -1)
        return ((flat - flat.mean(1, keepdims=True)) / flat.std(1, ddof=1, keepdims=True)).ravel()

    return float(((std(a) - std(b)) ** 2).sum() / a.size)


def _oracle(cands: np.ndarray, train: np.ndarray, mean: np.ndarray) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"match": [], "ncc": [], "ssim_reference": [], "ssim_aligned": [], "psnr": []}
    for x in train:
        dists = [_np_ncc(x, c) for c in cands]
        j = int(np.argmin(dists))
        c = cands[j]
        target = x + mean
        ref = c + mean
        ref = (ref - ref.min()) / (ref.max() - ref.min())
        scale = max(0.0, float((c * x).sum() / (c * c).sum()))
        aligned = np.clip(scale * c + mean, 0, 1)
        out["match"].append(j)
        out["ncc"].append(dists[j])
        out["ssim_reference"].append(_np_ssim(ref, target))
        out["ssim_aligned"].append(_np_ssim(aligned, target))
        out["psnr"].append(-10 * math.log10(((aligned - target) ** 2).mean()))
    return out


def _images(n: int, shape: tuple[int, ...] = (1, 12, 12), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n random images in [0, 1] whose min is 0 and max is 1; returns (mean-subtracted, mean)."""
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(n, *shape, generator=g, dtype=torch.float64)
    flat = imgs.view(n, -1)
    flat[:, 0] = 0.0
    flat[:, 1] = 1.0
    mean = imgs.mean(0)
    return imgs - mean, mean
