"""A patient's damage: global metabolism, focal damage per region family, lesions.

A patient has

- a global cortical metabolism ``g = 0.35 + 0.65 Beta(1, 2)`` (median 0.54), which
  lowers PET uptake (see :mod:`anomaly.simulate.scanners`);
- focal damage in four causal region families (:data:`CAUSAL_FAMILIES`): brainstem,
  thalamus, posteromedial cortex (precuneus, posterior cingulate) and frontal cortex
  (superior and middle frontal gyri). Each family is damaged with probability
  0.3/0.45/0.45/0.4; a damaged family gets a severity ``s ~ U(0.2, 1)`` (else 0).
  When ``s > 0.5``, a structural lesion (smooth-edged random ellipsoid of radius
  4-10 mm, centred deep inside one region of the family; both thalami with
  probability 1/2) appears, of strength ``w = 0.6 + 0.4 (s - 0.5) / 0.5``;
- 0, 1 or 2 distractor lesions (equally likely) in lateral temporal, occipital or
  parietal regions (:data:`DISTRACTOR_REGIONS`; never the cerebellum or brainstem),
  with ``s ~ U(0.55, 1)`` and a structural lesion: they look like causal damage but
  do not change the CRS-R.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from anomaly.simulate.anatomy import Anatomy
from anomaly.simulate.config import (
    CAUSAL_FAMILIES,
    DISTRACTOR_REGIONS,
    SimulationConfig,
)
from anomaly.simulate.simulator import Simulator

__all__ = ["Damage", "Lesion", "place_lesions", "sample_damage"]

_Geometry = tuple[np.ndarray, np.ndarray]  # 6 uniforms and a 3 x 3 normal matrix per lesion


@dataclass
class Lesion:
    """One structural lesion."""

    family: str  # causal family or "distractor"
    region: str
    severity: float
    strength: float  # maximum fraction of parenchyma replaced
    centre_mm: np.ndarray
    radius_mm: float

    def as_dict(self) -> dict[str, Any]:
        """Plain record (``SimulatedSubject.lesions``), positions rounded to 0.01 mm."""
        return {
            "family": self.family,
            "region": self.region,
            "severity": self.severity,
            "strength": self.strength,
            "centre_mm": self.centre_mm.round(2).tolist(),
            "radius_mm": round(self.radius_mm, 2),
        }


@dataclass
class Damage:
    """A subject's damage, as drawn (and overridden) and placed on its anatomy."""

    g: float  # global cortical metabolism, 1 for controls
    families: dict[str, float]  # severity per causal family
    distractors: list[tuple[str, float]]  # region, severity
    lesions: list[Lesion]
    weight: np.ndarray | None  # lesion weight w on the support; None without lesion

    @property
    def focal(self) -> bool:
        """Whether there is any focal damage (causal or distractor)."""
        return any(s > 0 for s in self.families.values()) or bool(self.distractors)


def sample_damage(
    cfg: SimulationConfig, rng: np.random.Generator, patient: bool
) -> tuple[float, dict[str, float], list[tuple[str, float]], dict[Any, _Geometry]]:
    """Draw g, family severities and distractors with a fixed number of draws."""
    families = list(CAUSAL_FAMILIES)
    lo, hi = cfg.metabolism_range
    g = lo + (hi - lo) * rng.beta(*cfg.metabolism_beta)
    hit = rng.random(len(families))
    sev = rng.uniform(*cfg.severity_range, size=len(families))
    n_distractors = int(rng.integers(0, cfg.max_distractors + 1))
    pool = rng.permutation(len(DISTRACTOR_REGIONS))[: cfg.max_distractors]
    d_sev = rng.uniform(min(cfg.lesion_threshold + 0.05, 1.0), 1.0, size=cfg.max_distractors)
    # Lesion geometry for every possible lesion, drawn whether used or not, so that
    # overriding the severities keeps the same lesion shapes.
    geometry = {fam: (rng.random(6), rng.standard_normal((3, 3))) for fam in families}
    for i in range(max(cfg.max_distractors, 1)):
        geometry[i] = (rng.random(6), rng.standard_normal((3, 3)))
    if not patient:
        return 1.0, {f: 0.0 for f in families}, [], geometry
    damage = {
        fam: float(sev[i]) if hit[i] < cfg.damage_probability.get(fam, 0.0) else 0.0
        for i, fam in enumerate(families)
    }
    distractors = [
        (DISTRACTOR_REGIONS[pool[i]], float(d_sev[i])) for i in range(n_distractors)
    ]
    return float(g), damage, distractors, geometry


def place_lesions(
    sim: Simulator,
    anat: Anatomy,
    damage: Mapping[str, float],
    distractors: Sequence[tuple[str, float]],
    geometry: Mapping,
) -> tuple[list[Lesion], np.ndarray]:
    """Structural lesions of a patient and their weight ``w`` on the support."""
    w = np.zeros(sim.support.size, np.float32)
    lesions: list[Lesion] = []
    for fam, region, s, u, rot in _lesion_sites(sim.config, damage, distractors, geometry):
        placed = _place_lesion(sim, anat, region, fam, s, u, rot)
        if placed is None:
            continue
        lesion, where, weight = placed
        lesions.append(lesion)
        w[where] = np.maximum(w[where], weight)  # `where` has unique entries
    return lesions, w


def _lesion_sites(
    cfg: SimulationConfig,
    damage: Mapping[str, float],
    distractors: Sequence[tuple[str, float]],
    geometry: Mapping,
) -> list[tuple[str, str, float, np.ndarray, np.ndarray]]:
    """Family, region, severity and geometry of every structural lesion to place."""
    sites: list[tuple[str, str, float, np.ndarray, np.ndarray]] = []
    for fam, regions in CAUSAL_FAMILIES.items():
        s = damage.get(fam, 0.0)
        if s <= cfg.lesion_threshold:
            continue
        u, rot = geometry[fam]
        if fam == "thalamus" and u[5] < 0.5:
            chosen = list(regions)  # bilateral thalamic lesion
        else:
            chosen = [regions[int(u[5] * len(regions)) % len(regions)]]
        for k, region in enumerate(chosen):
            uu = u.copy()
            uu[0] = (u[0] + 0.5 * k) % 1.0
            sites.append((fam, region, s, uu, rot))
    for i, (region, s) in enumerate(distractors):
        u, rot = geometry[i % max(cfg.max_distractors, 1)]  # more than drawn: reuse shapes
        sites.append(("distractor", region, s, u, rot))
    return sites


def _place_lesion(sim: Simulator, anat: Anatomy, region: str, family: str, severity: float,
                  u: np.ndarray, rot: np.ndarray) -> tuple[Lesion, np.ndarray, np.ndarray] | None:
    """Smooth ellipsoidal blob centred deep inside ``region``.

    Returns the lesion, the support positions it covers and its weight there, or
    None if the region has no voxel in this subject.
    """
    cfg, res = sim.config, sim.res
    where = np.flatnonzero(anat.labels == sim.tpl.names[region])
    if where.size == 0:
        return None
    vox = sim.coords[:, where].astype(np.int64)
    lo = vox.min(1)
    crop = np.zeros(tuple(vox.max(1) - lo + 3), bool)
    crop[tuple(vox - lo[:, None] + 1)] = True
    depth = ndimage.distance_transform_edt(crop)[tuple(vox - lo[:, None] + 1)] * res
    # Centre among the deepest voxels, so that the blob stays inside the region.
    deep = np.flatnonzero(depth >= 0.6 * depth.max())
    centre = vox[:, deep[int(u[0] * deep.size) % deep.size]].astype(np.float64)
    lo_r, hi_r = cfg.lesion_radius_mm
    radius = min(lo_r + (hi_r - lo_r) * u[1], max(1.2 * depth.max(), res))
    axes = radius * (0.75 + 0.5 * u[2:5])
    q, _ = np.linalg.qr(rot)  # random orientation
    offset = (vox - centre[:, None]) * res
    dist = np.sqrt(np.sum((q.T @ offset / axes[:, None]) ** 2, axis=0))
    strength = 0.6 + 0.4 * (severity - cfg.lesion_threshold) / max(1.0 - cfg.lesion_threshold, 1e-6)
    strength = float(np.clip(strength, 0.0, 1.0))
    weight = strength / (1.0 + np.exp((dist - 1.0) * radius / cfg.lesion_edge_mm))
    keep = weight > 1e-3
    centre_mm = (sim.tpl.affine @ np.r_[centre + [s.start for s in sim.tpl.box], 1.0])[:3]
    lesion = Lesion(family, region, float(severity), strength, centre_mm, float(radius))
    return lesion, where[keep], weight[keep].astype(np.float32)
