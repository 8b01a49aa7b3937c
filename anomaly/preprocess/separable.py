"""Separable linear filters on 3D arrays as three matrix products.

A linear operation that acts on each axis independently (axis-aligned resampling,
Gaussian smoothing) is one (n_out, n_in) matrix per axis. Applied as matrix products
(BLAS) it is several times faster than scipy's line-by-line filters, whose pass along
the first, slowest-varying axis walks memory with a large stride. The matrices are
built from scipy's own 1D filters applied to the identity, so boundary handling is
scipy's, and the results equal scipy's within float32 rounding.

Used by :mod:`anomaly.preprocess.grid` (resampling onto the model grid) and
:func:`gaussian_smooth` (the residual smoothing of the normative models).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy import ndimage


def apply_separable(data: np.ndarray, operators: Sequence[np.ndarray]) -> np.ndarray:
    """``data`` transformed by one matrix per axis: ``out[i,j,k] = sum A[i,a] B[j,b] C[k,c] data[a,b,c]``.

    Parameters
    ----------
    data : numpy.ndarray
        3D array (float32 for float32 products).
    operators : sequence of 3 numpy.ndarray
        Per axis, an (n_out, n_in) matrix with ``n_in`` the length of that axis.

    Returns
    -------
    numpy.ndarray
        C-contiguous array of shape ``(n_out0, n_out1, n_out2)``.
    """
    first, second, third = operators
    n0, n1, n2 = data.shape
    m0, m1 = first.shape[0], second.shape[0]
    # Contiguous products only: axis 0 as one (m0, n0) x (n0, n1*n2) product, axis 1 as
    # m0 products (m1, n1) x (n1, n2), axis 2 as one (m0*m1, n2) x (n2, m2) product.
    out = (first @ np.ascontiguousarray(data).reshape(n0, n1 * n2)).reshape(m0, n1, n2)
    out = np.matmul(second, out)
    out = out.reshape(m0 * m1, n2) @ third.T
    return np.ascontiguousarray(out.reshape(m0, m1, third.shape[0]))


def gaussian_smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(values, sigma)`` for a float32 3D array, 3-4x faster.

    Same kernel (truncated at 4 standard deviations) and boundary (``mode="reflect"``),
    equal within float32 rounding; other arrays go to scipy itself.

    Parameters
    ----------
    values : numpy.ndarray
        Array to smooth.
    sigma : float
        Standard deviation of the Gaussian kernel, in voxels (the same on every axis).

    Returns
    -------
    numpy.ndarray
        Smoothed array, same shape and dtype.
    """
    if values.ndim != 3 or values.dtype != np.float32:
        return ndimage.gaussian_filter(values, sigma)
    operators = [_gaussian_operator(n, float(sigma)) for n in values.shape]
    return apply_separable(values, operators)


@lru_cache(maxsize=32)
def _gaussian_operator(n: int, sigma: float) -> np.ndarray:
    """(n, n) float32 matrix of scipy's 1D Gaussian filter (reflect boundary), cached."""
    # Column j is the filter's response to the unit vector e_j: the matrix itself.
    operator = ndimage.gaussian_filter1d(np.eye(n), sigma, axis=0, mode="reflect").astype(np.float32)
    operator.setflags(write=False)  # shared through the cache
    return operator


__all__ = ["apply_separable", "gaussian_smooth"]
