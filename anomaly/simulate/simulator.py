"""A template plus a configuration, with everything derived from both (:class:`Simulator`).

It holds the voxels that can hold tissue (the support), the low-frequency bases of
the smooth random fields, look-up tables over atlas labels and the blur widths, and
is built once per cohort and worker process (:func:`get_simulator`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from anomaly.simulate.config import CAUSAL_FAMILIES, SimulationConfig
from anomaly.simulate.template import load_template

__all__ = ["Simulator", "get_simulator"]

_FWHM_TO_SIGMA = 1.0 / math.sqrt(8.0 * math.log(2.0))


def _dct_basis(n: int, order: int) -> np.ndarray:
    """Cosine basis functions ``cos(pi k (x + 1/2) / n)``, shape (order, n), float32."""
    x = (np.arange(n, dtype=np.float64) + 0.5) / n
    k = np.arange(order, dtype=np.float64)[:, None]
    return np.cos(np.pi * k * x[None, :]).astype(np.float32)


class Simulator:
    """A template plus a configuration, with everything derived from both.

    Built once per cohort (and per worker process); the functions of the subject
    model take it as their first argument.
    """

    def __init__(self, resolution: float, config: SimulationConfig, modalities: Sequence[str]):
        self.config = config
        self.modalities = tuple(modalities)
        self.tpl = load_template(float(resolution))
        self.res = self.tpl.resolution
        self._init_support()
        # Low-frequency bases on the box (x, y, z), for smooth random fields.
        self._bases: dict[int, list[np.ndarray]] = {}
        self._init_lookup_tables()
        self._init_blurs()

    def _init_support(self) -> None:
        """Voxels that can hold tissue after deformation, and the brain centre.

        Restricting the per-subject interpolation to them is the main saving in time.
        """
        cfg, tpl = self.config, self.tpl
        reach = 4.0 * (cfg.displacement_mm + cfg.fine_displacement_mm) + 80.0 * (
            3.0 * cfg.scale_sd + abs(cfg.male_scale - 1.0)
        )
        self.support = np.flatnonzero(tpl.outside_mm.ravel() <= reach + self.res)
        coords = np.unravel_index(self.support, tpl.box_shape)
        self.coords = np.stack(coords).astype(np.float32)  # (3, N) box voxel indices
        brain = np.argwhere(tpl.mask > 0)
        self.centre = brain.mean(0).astype(np.float32)

    def _init_lookup_tables(self) -> None:
        """PET regional factors, sensitivity to the global metabolism, family labels."""
        cfg, names = self.config, self.tpl.names
        n_lut = max(names.values()) + 1
        self.regional = np.ones(n_lut, np.float32)
        for pattern, factor in cfg.pet_regional.items():
            regex = re.compile(pattern, flags=re.IGNORECASE)
            for name, index in names.items():
                if regex.search(name):
                    self.regional[index] = factor
        # How much each label follows the global cortical metabolism g.
        self.sensitivity = np.full(n_lut, cfg.subcortical_sensitivity, np.float32)
        for name, index in names.items():
            if index >= 100:  # Neuromorphometrics numbers cortical regions from 100
                self.sensitivity[index] = 1.0
            elif "cerebell" in name.lower():
                self.sensitivity[index] = 0.0
            elif name == "Brain_Stem":
                self.sensitivity[index] = cfg.brainstem_sensitivity
        self.family_index = {
            fam: np.array([names[r] for r in regions]) for fam, regions in CAUSAL_FAMILIES.items()
        }
        # Left and right homologues share a region pair (correlated regional physiology).
        pair_names = sorted({re.sub(r"^(Left|Right)_", "", name) for name in names})
        self.region_pair = np.zeros(n_lut, np.int64)
        for name, index in names.items():
            self.region_pair[index] = pair_names.index(re.sub(r"^(Left|Right)_", "", name))
        self.n_region_pairs = len(pair_names)

    def _init_blurs(self) -> None:
        """Gaussian blurs in voxel units, and the SD of blurred unit white noise."""
        cfg, res = self.config, self.res
        self.mri_sigma = cfg.mri_fwhm_mm * _FWHM_TO_SIGMA / res
        self.pet_sigma = cfg.pet_fwhm_mm * _FWHM_TO_SIGMA / res
        self.noise_sigma = cfg.pet_noise_fwhm_mm * _FWHM_TO_SIGMA / res
        self.damage_sigma = cfg.damage_smoothing_fwhm_mm * _FWHM_TO_SIGMA / res
        # SD of white noise after the noise blur, to rescale it back to unit SD.
        delta = np.zeros((17, 17, 17), np.float32)
        delta[8, 8, 8] = 1.0
        kernel = ndimage.gaussian_filter(delta, self.noise_sigma, truncate=3.0)
        self.noise_gain = float(np.sqrt(np.sum(kernel.astype(np.float64) ** 2)))

    def pet_blur_sigma(self, fwhm_mm: float) -> float:
        """Gaussian SD in voxels of a PET point-spread function of ``fwhm_mm``."""
        return fwhm_mm * _FWHM_TO_SIGMA / self.res

    def smooth_field(self, rng: np.random.Generator, order: int, rms: float) -> np.ndarray:
        """Random smooth field on the box with RMS ``rms`` over the brain.

        Sum of ``order**3`` separable cosine functions with coefficients ~ N(0, 1 /
        (1 + i^2 + j^2 + k^2)) and no constant term: smooth by construction, and
        cheaper than filtering white noise at full resolution.
        """
        if order not in self._bases:
            self._bases[order] = [_dct_basis(n, order) for n in self.tpl.box_shape]
        bx, by, bz = self._bases[order]
        i, j, k = np.meshgrid(*(np.arange(order),) * 3, indexing="ij")
        coef = rng.standard_normal((order,) * 3) / (1.0 + i**2 + j**2 + k**2)
        coef[0, 0, 0] = 0.0
        out = np.tensordot(coef.astype(np.float32), bx, axes=(0, 0))  # (j, k, x)
        out = np.tensordot(out, by, axes=(0, 0))  # (k, x, y)
        out = np.tensordot(out, bz, axes=(0, 0))  # (x, y, z)
        brain = out.reshape(-1)[self.support]
        scale = rms / max(float(np.sqrt(np.mean(brain.astype(np.float64) ** 2))), 1e-12)
        return (out * np.float32(scale)).astype(np.float32, copy=False)

    def to_box(self, values: np.ndarray) -> np.ndarray:
        """Scatter support values into a zero box."""
        box = np.zeros(self.tpl.box_shape, np.float32)
        box.reshape(-1)[self.support] = values
        return box

    def to_grid(self, box: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
        """Embed a box array into the full template grid."""
        full = np.zeros(self.tpl.shape, dtype)
        full[self.tpl.box] = box
        return full

    def on_support(self, box: np.ndarray) -> np.ndarray:
        """Values of a box array at the support voxels."""
        return box.reshape(-1)[self.support]

    def blur(self, box: np.ndarray, sigma: float) -> np.ndarray:
        """Gaussian blur (SD ``sigma`` voxels) of a box array, zero outside."""
        return ndimage.gaussian_filter(box, sigma, truncate=3.0, mode="constant")


_SIMULATORS: dict[tuple, Simulator] = {}


def get_simulator(
    resolution: float, config: SimulationConfig, modalities: tuple[str, ...]
) -> Simulator:
    """Cached :class:`Simulator` (its construction costs about a second)."""
    key = (resolution, repr(config), modalities)
    if key not in _SIMULATORS:
        if len(_SIMULATORS) >= 4:
            _SIMULATORS.pop(next(iter(_SIMULATORS)))
        _SIMULATORS[key] = Simulator(resolution, config, modalities)
    return _SIMULATORS[key]

