"""Tests of the separable filters (resampling and smoothing as matrix products)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from anomaly.normative.calibration import smooth_in_mask
from anomaly.preprocess.separable import apply_separable, gaussian_smooth


def test_apply_separable_is_the_product_along_each_axis(rng):
    data = rng.normal(size=(7, 9, 5)).astype(np.float32)
    ops = [rng.normal(size=(m, n)).astype(np.float32) for m, n in zip((4, 6, 3), data.shape)]
    expected = np.einsum("ia,jb,kc,abc->ijk", *[o.astype(np.float64) for o in ops], data.astype(np.float64))
    out = apply_separable(data, ops)
    assert out.shape == (4, 6, 3) and out.flags.c_contiguous
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sigma", [0.6, 1.0, 1.5, 3.0])
def test_gaussian_smooth_equals_scipy_edges_included(rng, sigma):
    # Odd sizes and an axis shorter than the kernel: the reflect boundary must be scipy's.
    for shape in [(20, 24, 22), (9, 5, 13), (3, 30, 4)]:
        values = rng.normal(size=shape).astype(np.float32)
        fast = gaussian_smooth(values, sigma)
        assert fast.dtype == np.float32 and fast.shape == shape
        np.testing.assert_allclose(fast, ndimage.gaussian_filter(values, sigma), atol=1e-6)


def test_gaussian_smooth_leaves_other_arrays_to_scipy(rng):
    values = rng.normal(size=(6, 7, 8))  # float64 (calibration variances): scipy itself, bit for bit
    np.testing.assert_array_equal(gaussian_smooth(values, 1.0), ndimage.gaussian_filter(values, 1.0))
    flat = rng.normal(size=(30, 40)).astype(np.float32)
    np.testing.assert_array_equal(gaussian_smooth(flat, 1.0), ndimage.gaussian_filter(flat, 1.0))


def test_smooth_in_mask_keeps_the_outside_at_zero_and_a_constant_constant(rng):
    mask = np.zeros((16, 18, 14), bool)
    mask[3:13, 4:15, 2:12] = True
    constant = np.full(mask.shape, 2.5, np.float32)
    out = smooth_in_mask(constant, mask, 1.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[mask], 2.5, rtol=1e-5)  # normalised convolution: no edge effect
    assert not out[~mask].any()
