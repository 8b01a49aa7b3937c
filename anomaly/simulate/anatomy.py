"""One subject's anatomy: demographics, a deformed template, ageing.

Each subject gets

- an age, uniform on the integers 20..85, and a sex, M or F with probability 1/2;
- a smooth random displacement field (3 x 3 x 3 low-frequency cosine basis
  functions per component, RMS ``displacement_mm`` = 2 mm over the brain), plus a
  global scaling about the brain centre, ``exp(N(0, scale_sd))`` with scale_sd =
  1.5 % (about +-3 %), times ``male_scale`` = 1.02 for men, applied with
  :func:`scipy.ndimage.map_coordinates` (trilinear; labels nearest);
- cerebrospinal fluid (CSF): the brain mask minus GM minus WM, clipped at 0;
- grey-matter atrophy: GM probability times ``1 - 0.003 (age - 30)`` after 30, the
  lost GM becoming CSF;
- ventricle growth: voxels closer than ``0.06 (age - 30)`` mm to the lateral
  ventricles (Neuromorphometrics ``Left/Right_Lateral_Ventricle`` where the template
  is CSF) become CSF, the GM and WM there shrinking in proportion.

The realistic preset (:mod:`anomaly.simulate.variation`) adds a finer displacement
field, a per-subject ageing rate and cortical thickness variation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from anomaly.simulate.config import SimulationConfig
from anomaly.simulate.simulator import Simulator

__all__ = ["Anatomy", "demographics", "subject_anatomy"]


@dataclass
class Anatomy:
    """One subject's tissue maps and labels on the support voxels."""

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray  # brain-mask fraction
    labels: np.ndarray


def demographics(cfg: SimulationConfig, rng: np.random.Generator) -> tuple[int, str]:
    """Age and sex: the first two draws of the anatomy stream."""
    age = int(rng.integers(cfg.age_range[0], cfg.age_range[1] + 1))
    sex = "M" if rng.random() < 0.5 else "F"
    return age, sex


def subject_anatomy(sim: Simulator, rng: np.random.Generator, age: int, sex: str) -> Anatomy:
    """Deform the templates and age them (anatomy stream, after :func:`demographics`)."""
    tpl = sim.tpl
    cfg = sim.config
    warp, labels = _deformation(sim, rng, sex)
    gm = warp(tpl.gm)
    wm = warp(tpl.wm)
    brain = warp(tpl.mask)
    ventricle = warp(tpl.ventricle_mm, mode="nearest")  # only used where brain > 0
    # Realistic variation only: these draws come after the default ones, so that the
    # default simulator's subjects do not change.
    rate = math.exp(cfg.atrophy_rate_sd * rng.standard_normal()) if cfg.atrophy_rate_sd > 0 else 1.0
    if cfg.cortical_thickness_sd > 0:
        # Thicker or thinner cortex: GM grows into (or gives way to) the CSF around it.
        thickness = np.exp(sim.on_support(sim.smooth_field(rng, 5, cfg.cortical_thickness_sd)))
        gm = np.minimum(gm * thickness, np.clip(brain - wm, 0.0, 1.0))
    gm, wm, csf = _age(cfg, sim.res, age, gm, wm, brain, ventricle, rate)
    return Anatomy(gm=gm, wm=wm, csf=csf, brain=brain, labels=labels)


def _deformation(sim: Simulator, rng: np.random.Generator,
                 sex: str) -> tuple[Callable[..., np.ndarray], np.ndarray]:
    """Random deformation: a function that warps a box array to the support, and the labels."""
    cfg, tpl = sim.config, sim.tpl
    scale = math.exp(cfg.scale_sd * rng.standard_normal()) * (cfg.male_scale if sex == "M" else 1.0)
    # Displacement in voxels at the support voxels (where it matters).
    rms = cfg.displacement_mm / math.sqrt(3.0) / sim.res  # per component, in voxels
    disp = [sim.on_support(sim.smooth_field(rng, 3, rms)) for _ in range(3)]
    if cfg.fine_displacement_mm > 0:  # a second, finer scale (realistic variation)
        fine = cfg.fine_displacement_mm / math.sqrt(3.0) / sim.res
        disp = [d + sim.on_support(sim.smooth_field(rng, 6, fine)) for d in disp]
    c = sim.centre[:, None]
    src = c + (sim.coords - c) / np.float32(scale) + np.stack(disp)

    # Nearest template voxel of each source point: gives the labels, and tells
    # which points are near enough to the brain for interpolation to be non-zero
    # (a trilinear cell touches the mask only if its nearest voxel is within
    # sqrt(3) voxels of it), which spares a third of the interpolation work.
    shape = np.array(tpl.box_shape)[:, None]
    nearest = np.clip(np.rint(src), 0, shape - 1).astype(np.intp)
    flat = np.ravel_multi_index(tuple(nearest), tpl.box_shape)
    near = tpl.outside_mm.reshape(-1)[flat] <= 2.0 * sim.res
    labels = np.where(near, tpl.labels.reshape(-1)[flat], 0).astype(np.int32)
    src_near = src[:, near]

    def warp(a: np.ndarray, mode: str = "constant") -> np.ndarray:
        out = np.zeros(src.shape[1], np.float32)
        out[near] = ndimage.map_coordinates(a, src_near, order=1, mode=mode, prefilter=False)
        return out

    return warp, labels


def _age(cfg: SimulationConfig, res: float, age: int, gm: np.ndarray, wm: np.ndarray,
         brain: np.ndarray, ventricle: np.ndarray,
         rate: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GM atrophy and ventricle growth with age; returns GM, WM and CSF (GM, WM in place).

    ``rate`` scales this subject's ageing (1 in the default simulator).
    """
    years = max(age - cfg.atrophy_onset_age, 0.0) * rate
    gm *= np.float32(max(1.0 - cfg.gm_atrophy_per_year * years, 0.0))
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    growth = cfg.ventricle_growth_mm_per_year * years
    if growth > 0:
        # Soft-edged dilation of the ventricles by `growth` mm.
        grown = np.clip((growth - ventricle) / res + 0.5, 0.0, 1.0) * brain
        new_csf = np.maximum(csf, grown)
        tissue = gm + wm
        shrink = np.clip((brain - new_csf) / np.maximum(tissue, 1e-6), 0.0, 1.0)
        gm *= shrink
        wm *= shrink
        csf = new_csf
    return gm, wm, csf
