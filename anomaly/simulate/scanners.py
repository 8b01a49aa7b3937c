"""Images of one subject: tissue contrast, PET uptake and the scanner models.

**MRI** (T1w, FLAIR, T2w, ADC). Intensity is a tissue mixture: T1w GM/WM/CSF = 0.65/1.0/0.2,
FLAIR 0.82/0.68/0.1. A structural lesion replaces a fraction ``w`` (0..1, smooth
blob) of the parenchyma (GM + WM) with lesion tissue (T1w 0.35: hypointense; FLAIR
1.35: hyperintense). Then a Gaussian blur of 1 mm FWHM (scanner resolution), a smooth
multiplicative bias field (``exp`` of a 3 x 3 x 3 cosine field of RMS 5 %, about
+-10 %), a scanner gain (``1000 exp(N(0, 0.2))``) and Rician noise: magnitude of the
signal plus complex Gaussian noise, SNR (WM or GM signal over noise SD) uniform in
20..30, rounded to whole numbers as scanners store them. The images are
brain-extracted: no skull or scalp, the background outside the brain holds only the
Rician noise floor.

**FDG PET.** Uptake GM/WM/CSF = 4.0/1.0/0.05, times regional factors like real FDG
(thalamus 1.15, caudate/putamen 1.12, precuneus/posterior cingulate 1.10,
calcarine/cuneus/lingual 1.08, cerebellum 0.85, hippocampus/amygdala/parahippocampal/
entorhinal 0.80), times ``exp`` of a smooth physiological field (4 x 4 x 4 cosine
basis, RMS 6 %), then the point-spread function (Gaussian, 6 mm FWHM), a global
SUV-like scale (``2 U(0.7, 1.3)``: PET needs reference-region normalisation), and
noise whose SD is 5 % of the local signal at grey-matter level (Poisson-like
``sqrt`` dependence, spatially correlated with 4 mm FWHM), clipped at 0.

**Damage in PET.** Uptake is multiplied by ``1 - a (1 - g)`` with ``a`` = 1 in the
cortex (Neuromorphometrics labels >= 100), 0.3 in the brainstem, 0.5 elsewhere in the
cerebrum and 0 in the cerebellum, which therefore stays a valid SUVR reference
region; by ``1 - 0.7 s`` over the regions of a family (or distractor) of severity
``s`` (the log-factor smoothed with 8 mm FWHM, so that the drop fades at the edges);
and by ``1 - 0.8 w`` where a structural lesion of weight ``w`` lies.

**T2w and ADC.** T2w GM/WM/CSF/lesion = 0.8/0.6/1.6/1.3 (lesions hyperintense); the
ADC map holds 0.8/0.7/3.0 x 1e-3 mm^2/s with acute lesions at 0.45 (restricted
diffusion: lower), quantitative (no bias field, fixed gain of 1000: 1e-6 mm^2/s).

**Realistic variation** (:mod:`anomaly.simulate.variation`): per-subject grey-matter
contrast, PET regional physiology shared by left and right homologues, and a PET
point-spread function drawn per subject (``pet_fwhm_range``).

Each modality returns a :class:`Scan`: the noise-free image, its damage-free variants
(for the ground-truth masks and twins) and the scanner that turns any of them into
the recorded image with the same bias, gain and noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
from scipy import ndimage

from anomaly.constants import PET
from anomaly.simulate.anatomy import Anatomy
from anomaly.simulate.lesions import Damage
from anomaly.simulate.simulator import Simulator

__all__ = ["Scan", "mri_contrast", "pet_activity", "render"]


@dataclass
class Scan:
    """One modality of one subject, before the scanner's noise."""

    clean: np.ndarray  # noise-free image on the box
    variants: dict[str, np.ndarray]  # "healthy" and "global" noise-free images, or {}
    gain: float  # global intensity factor (MRI gain, PET SUV-like scale)
    finish: Callable[[np.ndarray], np.ndarray]  # box image -> recorded image on the grid


def render(sim: Simulator, rng: np.random.Generator, modality: str, anat: Anatomy,
           damage: Damage, variants: bool) -> Scan:
    """Simulate ``modality`` from its own stream ``rng``; ``variants``: also damage-free."""
    if modality == PET:
        return _render_pet(sim, rng, anat, damage, variants)
    return _render_mri(sim, rng, modality, anat, damage, variants)


def mri_contrast(
    anat: Anatomy, contrast: Mapping[str, float], w: np.ndarray | None
) -> np.ndarray:
    """Tissue mixture; a lesion replaces the fraction ``w`` of the parenchyma."""
    normal = contrast["gm"] * anat.gm + contrast["wm"] * anat.wm
    if w is not None:
        normal = (1.0 - w) * normal + w * (anat.gm + anat.wm) * contrast["lesion"]
    return (normal + contrast["csf"] * anat.csf).astype(np.float32)


def _render_mri(sim: Simulator, rng: np.random.Generator, modality: str, anat: Anatomy,
                damage: Damage, variants: bool) -> Scan:
    """T1w or FLAIR: contrast, blur, then bias, gain and Rician noise (draws in this order)."""
    cfg = sim.config
    contrast = _contrast(cfg, modality)
    bias = np.exp(sim.smooth_field(rng, 3, cfg.bias_rms))
    gain = cfg.mri_gain * math.exp(cfg.mri_gain_sd * rng.standard_normal())
    snr = rng.uniform(*cfg.snr_range)
    # Noise SD relative to the brightest tissue (WM in T1w, GM in FLAIR).
    sigma = gain * max(contrast["gm"], contrast["wm"]) / snr
    n1 = rng.standard_normal(sim.tpl.shape, dtype=np.float32)
    n2 = rng.standard_normal(sim.tpl.shape, dtype=np.float32)
    if modality == "ADC":  # quantitative map: no bias field, no scanner gain
        bias = np.ones_like(bias)
        gain = cfg.mri_gain
        sigma = gain * max(contrast["gm"], contrast["wm"]) / snr
    if cfg.contrast_sd > 0:  # grey/white contrast of this subject (realistic variation)
        contrast = {**contrast, "gm": contrast["gm"] * math.exp(cfg.contrast_sd * rng.standard_normal())}
    w = damage.weight
    clean = sim.blur(sim.to_box(mri_contrast(anat, contrast, w)), sim.mri_sigma)
    twins = {}
    if variants:
        # Global metabolism does not show in MRI: both variants are lesion-free.
        healthy = (
            sim.blur(sim.to_box(mri_contrast(anat, contrast, None)), sim.mri_sigma)
            if w is not None else clean
        )
        twins = {"healthy": healthy, "global": healthy}
    finish = partial(_mri_scanner, sim, bias, gain, sigma, n1, n2)
    return Scan(clean, twins, float(gain), finish)


def _contrast(cfg, modality: str) -> Mapping[str, float]:
    """Tissue intensities of an MRI modality."""
    return {"T1w": cfg.t1w_contrast, "FLAIR": cfg.flair_contrast, "T2w": cfg.t2w_contrast,
            "ADC": cfg.adc_contrast}[modality]


def _mri_scanner(sim: Simulator, bias: np.ndarray, gain: float, sigma: float, n1: np.ndarray,
                 n2: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Recorded MRI on the grid: bias, gain, Rician noise, whole numbers."""
    signal = sim.to_grid(box * bias * np.float32(gain))
    # Rician magnitude |signal + complex Gaussian noise|, rounded to the
    # integers that scanners store (written as int16: 3x smaller files).
    magnitude = np.sqrt((signal + sigma * n1) ** 2 + (sigma * n2) ** 2)
    return np.clip(np.rint(magnitude), 0, np.iinfo(np.int16).max).astype(np.float32)


def pet_activity(sim: Simulator, anat: Anatomy, physiology: np.ndarray, g: float,
                 damage: Mapping[str, float], distractors: Sequence[tuple[str, float]],
                 w: np.ndarray | None) -> np.ndarray:
    """Noise-free FDG uptake on the support (before the point-spread function)."""
    cfg = sim.config
    up = cfg.pet_uptake
    act = up["gm"] * anat.gm + up["wm"] * anat.wm + up["csf"] * anat.csf
    act *= sim.regional[anat.labels]
    act *= physiology
    if g != 1.0:
        act *= 1.0 - np.float32(1.0 - g) * sim.sensitivity[anat.labels]
    log_factor = _hypometabolism(sim, anat, damage, distractors)
    if np.any(log_factor):
        act *= np.exp(sim.on_support(sim.blur(sim.to_box(log_factor), sim.damage_sigma)))
    if w is not None:
        act *= 1.0 - cfg.lesion_pet_drop * w
    return act.astype(np.float32, copy=False)


def _hypometabolism(sim: Simulator, anat: Anatomy, damage: Mapping[str, float],
                    distractors: Sequence[tuple[str, float]]) -> np.ndarray:
    """Log uptake factor of regional hypometabolism on the support, before smoothing.

    It is painted on the damaged regions and then smoothed, so that the drop fades
    over a few mm instead of stopping at the atlas boundary (deafferentation does
    not follow gyral labels).
    """
    cfg = sim.config

    def log_drop(s: float) -> float:
        return math.log(max(1.0 - cfg.pet_drop * s, 1e-3))

    log_factor = np.zeros(anat.labels.shape, np.float32)
    for fam, s in damage.items():
        if s > 0:
            log_factor[np.isin(anat.labels, sim.family_index[fam])] += log_drop(s)
    for region, s in distractors:
        if s > 0:
            log_factor[anat.labels == sim.tpl.names[region]] += log_drop(s)
    return log_factor


def _render_pet(sim: Simulator, rng: np.random.Generator, anat: Anatomy, damage: Damage,
                variants: bool) -> Scan:
    """FDG PET: uptake, point-spread function, then scale and noise (draws in this order)."""
    cfg = sim.config
    physiology = np.exp(sim.on_support(sim.smooth_field(rng, 4, cfg.pet_physiological_rms)))
    physiology, psf_sigma = _pet_subject_extras(sim, rng, anat, physiology)

    def image(g: float, focal: bool) -> np.ndarray:
        act = pet_activity(sim, anat, physiology, g, damage.families if focal else {},
                           damage.distractors if focal else [],
                           damage.weight if focal else None)
        return sim.blur(sim.to_box(act), psf_sigma)

    clean = image(damage.g, True)
    twins = {}
    if variants:  # damage-free images; the same as `clean` where nothing differs
        same = not damage.focal
        twins = {
            "healthy": clean if same and damage.g == 1.0 else image(1.0, False),
            "global": clean if same else image(damage.g, False),
        }
    scale = cfg.pet_unit * rng.uniform(*cfg.pet_scale_range)
    noise = rng.standard_normal(sim.tpl.shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, sim.noise_sigma, truncate=3.0, mode="wrap")
    noise *= np.float32(cfg.pet_noise / sim.noise_gain)
    return Scan(clean, twins, float(scale), partial(_pet_scanner, sim, scale, noise))


def _pet_subject_extras(sim: Simulator, rng: np.random.Generator, anat: Anatomy,
                        physiology: np.ndarray) -> tuple[np.ndarray, float]:
    """Regional physiology and per-subject resolution of the realistic variation.

    Draws nothing in the default simulator (its subjects stay the same): left and right
    homologues share most of their factor (``0.8 shared + 0.6 own`` in SD units).
    """
    cfg = sim.config
    if cfg.pet_regional_sd > 0:
        shared = rng.standard_normal(sim.n_region_pairs)
        own = rng.standard_normal(sim.regional.size)
        log_factor = cfg.pet_regional_sd * (0.8 * shared[sim.region_pair] + 0.6 * own)
        physiology = physiology * np.exp(log_factor.astype(np.float32))[anat.labels]
    sigma = sim.pet_sigma
    if cfg.pet_fwhm_range is not None:
        sigma = sim.pet_blur_sigma(rng.uniform(*cfg.pet_fwhm_range))
    return physiology, sigma


def _pet_scanner(sim: Simulator, scale: float, noise: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Recorded PET on the grid: SUV-like scale and signal-dependent correlated noise."""
    ref = scale * sim.config.pet_uptake["gm"]  # grey-matter signal level
    signal = sim.to_grid(box * np.float32(scale))
    # Poisson-like: SD ~ sqrt(signal), equal to pet_noise at GM level;
    # the 10 % floor keeps some noise in the background.
    sd = np.sqrt(np.maximum(signal, 0.0) * ref + (0.1 * ref) ** 2)
    return np.maximum(signal + noise * sd, 0.0).astype(np.float32)

