"""Small batches of real images that ship with scikit-learn (no download), for tests and demos.

    x, y = digits(size=32)        # 1,797 handwritten digits, RGB in [-1, 1], labels 0..9
    x = sample_photos(size=96)    # crops of scikit-learn's two sample photos, RGB in [-1, 1]

Images are float32 NHWC scaled to [-1, 1] like the MobileNets' inputs. Resizing is bilinear,
done in numpy (no TensorFlow needed).
"""
from __future__ import annotations

import numpy as np


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of bilinear weights, pixel centres aligned (half-pixel)."""
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    m = np.zeros((n_out, n_in), dtype=np.float64)
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m


def resize(images: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (N, H, W, C) or (N, H, W) images to `size` (int or (h, w))."""
    h_out, w_out = (size, size) if isinstance(size, int) else size
    images = np.asarray(images, dtype=np.float64)
    squeeze = images.ndim == 3
    if squeeze:
        images = images[..., None]
    rows = _interp_matrix(images.shape[1], h_out)
    cols = _interp_matrix(images.shape[2], w_out)
    out = np.einsum("ph,nhwc->npwc", rows, images)  # two separable passes: O(size)
    out = np.einsum("qw,npwc->npqc", cols, out)
    return (out[..., 0] if squeeze else out).astype(np.float32)


def digits(size: int = 32, n: int | None = None, seed: int | None = 0):
    """scikit-learn's 8x8 digits upscaled to size x size RGB in [-1, 1]; returns (x, y).

    With `n`, a random (seeded) subset of n images; `seed=None` keeps the file order.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    images = data.images.astype(np.float32) / 16.0  # 0..1
    labels = data.target.astype(np.int64)
    if seed is not None:
        order = np.random.RandomState(seed).permutation(len(images))
        images, labels = images[order], labels[order]
    if n is not None:
        images, labels = images[:n], labels[:n]
    x = resize(images, size) * 2.0 - 1.0
    x = np.repeat(x[..., None], 3, axis=-1)
    return np.clip(x, -1.0, 1.0).astype(np.float32), labels


def sample_photos(size: int = 96, crops_per_image: int = 4, seed: int = 0) -> np.ndarray:
    """Square crops of scikit-learn's two sample photos (china, flower), size x size RGB.

    The first crop of each photo is its largest centred square; the others are random squares
    of 40-100% of the short side. Returns (2 * crops_per_image, size, size, 3) in [-1, 1].
    """
    from sklearn.datasets import load_sample_images

    rng = np.random.RandomState(seed)
    out = []
    for photo in load_sample_images().images:
        h, w = photo.shape[:2]
        short = min(h, w)
        for i in range(crops_per_image):
            side = short if i == 0 else int(short * rng.uniform(0.4, 1.0))
            top = (h - side) // 2 if i == 0 else rng.randint(0, h - side + 1)
            left = (w - side) // 2 if i == 0 else rng.randint(0, w - side + 1)
            crop = photo[top:top + side, left:left + side].astype(np.float32) / 255.0
            out.append(resize(crop[None], size)[0])
    return (np.stack(out) * 2.0 - 1.0).clip(-1.0, 1.0).astype(np.float32)
