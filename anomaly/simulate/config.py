"""Parameters of the simulator: region families, :class:`CRSModel` and :class:`SimulationConfig`.

Every number of the generative model lives here; the modules that use a group of
parameters describe what it does (``anatomy``, ``scanners``, ``lesions``, ``labels``)
and ``docs/simulator.md`` sums them up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from anomaly.constants import CRS_MAX, PET

__all__ = [
    "ALL_MODALITIES", "ATLAS", "CAUSAL_FAMILIES", "DISTRACTOR_REGIONS", "MODALITIES", "CRSModel", "SimulationConfig",
]

#: Modalities the simulator writes by default (BIDS suffixes).
MODALITIES: tuple[str, ...] = ("T1w", "FLAIR", PET)
#: Every modality the simulator can write: the defaults plus T2w and an ADC map.
ALL_MODALITIES: tuple[str, ...] = ("T1w", "T2w", "FLAIR", "ADC", PET)

#: Atlas whose region names the families below use (shipped with the package).
ATLAS = "neuromorphometrics"

#: Region families whose damage lowers the CRS-R: exact Neuromorphometrics names.
CAUSAL_FAMILIES: dict[str, tuple[str, ...]] = {
    "brainstem": ("Brain_Stem",),
    "thalamus": ("Left_Thalamus_Proper", "Right_Thalamus_Proper"),
    "posteromedial": (
        "Left_PCu_precuneus",
        "Right_PCu_precuneus",
        "Left_PCgG_posterior_cingulate_gyrus",
        "Right_PCgG_posterior_cingulate_gyrus",
    ),
    "frontal": (
        "Left_SFG_superior_frontal_gyrus",
        "Right_SFG_superior_frontal_gyrus",
        "Left_MFG_middle_frontal_gyrus",
        "Right_MFG_middle_frontal_gyrus",
    ),
}

#: Regions where distractor lesions go: lateral temporal, occipital and parietal
#: cortex; by construction they do not change the CRS-R.
DISTRACTOR_REGIONS: tuple[str, ...] = tuple(
    f"{side}_{name}"
    for name in (
        "MTG_middle_temporal_gyrus",
        "ITG_inferior_temporal_gyrus",
        "MOG_middle_occipital_gyrus",
        "IOG_inferior_occipital_gyrus",
        "SOG_superior_occipital_gyrus",
        "SPL_superior_parietal_lobule",
        "SMG_supramarginal_gyrus",
    )
    for side in ("Left", "Right")
)


@dataclass(frozen=True)
class CRSModel:
    """Generative model of the true CRS-R total from the causal variables.

    ``arousal = (1 - brainstem_weight s_bs) (1 - thalamus_weight s_th)``,
    ``awareness = clip((g - metabolism_floor) / (1 - metabolism_floor), 0, 1)
    (1 - posteromedial_weight s_pmc) (1 - frontal_weight s_fr)`` and
    ``crs_true = crs_max arousal (reflex_baseline + (1 - reflex_baseline)
    awareness ** awareness_exponent)``. It is monotone: non-increasing in every
    severity, non-decreasing in ``g``.

    Parameters
    ----------
    brainstem_weight, thalamus_weight : float
        Loss of arousal at full brainstem (ARAS) or thalamic damage.
    metabolism_floor : float
        Global cortical metabolism (fraction of normal) below which there is no
        awareness (0.38: UWS patients have about 38 % of normal cortical metabolism).
    posteromedial_weight, frontal_weight : float
        Loss of awareness at full posteromedial or frontal damage.
    reflex_baseline : float
        Fraction of the scale reached with intact arousal and no awareness
        (reflexive behaviour of UWS patients).
    awareness_exponent : float
        Shape of the awareness contribution (1 = linear).
    crs_max : int
        Maximum CRS-R total (23).
    """

    brainstem_weight: float = 0.9
    thalamus_weight: float = 0.5
    metabolism_floor: float = 0.38
    posteromedial_weight: float = 0.6
    frontal_weight: float = 0.4
    reflex_baseline: float = 0.25
    awareness_exponent: float = 1.0
    crs_max: int = CRS_MAX

    def arousal(self, damage: Mapping[str, float]) -> float:
        """Arousal in [0, 1] from the brainstem and thalamus severities."""
        return (1.0 - self.brainstem_weight * damage.get("brainstem", 0.0)) * (
            1.0 - self.thalamus_weight * damage.get("thalamus", 0.0)
        )

    def awareness(self, global_metabolism: float, damage: Mapping[str, float]) -> float:
        """Awareness in [0, 1] from global cortical metabolism and cortical damage."""
        ramp = (global_metabolism - self.metabolism_floor) / (1.0 - self.metabolism_floor)
        return (
            min(max(ramp, 0.0), 1.0)
            * (1.0 - self.posteromedial_weight * damage.get("posteromedial", 0.0))
            * (1.0 - self.frontal_weight * damage.get("frontal", 0.0))
        )

    def __call__(self, global_metabolism: float, damage: Mapping[str, float]) -> float:
        """True (noise-free, continuous) CRS-R total.

        Parameters
        ----------
        global_metabolism : float
            Global cortical metabolism ``g`` as a fraction of normal.
        damage : mapping of str to float
            Severity in [0, 1] per causal family (missing families count as 0).

        Returns
        -------
        float
            In ``[0, crs_max]``.
        """
        awareness = self.awareness(global_metabolism, damage)
        behaviour = self.reflex_baseline + (1.0 - self.reflex_baseline) * (
            awareness**self.awareness_exponent
        )
        return float(self.crs_max * self.arousal(damage) * behaviour)


@dataclass(frozen=True)
class SimulationConfig:
    """All parameters of the simulator (defaults: see ``docs/simulator.md``).

    Mappings are keyed by tissue (``"gm"``, ``"wm"``, ``"csf"``, ``"lesion"``), by
    causal family or by a regular expression on Neuromorphometrics region names.
    """

    # anatomy
    age_range: tuple[int, int] = (20, 85)
    displacement_mm: float = 2.0
    scale_sd: float = 0.015
    male_scale: float = 1.02
    atrophy_onset_age: float = 30.0
    gm_atrophy_per_year: float = 0.003
    ventricle_growth_mm_per_year: float = 0.06
    # realistic healthy variation (0 = off; see anomaly.simulate.variation)
    fine_displacement_mm: float = 0.0
    atrophy_rate_sd: float = 0.0
    cortical_thickness_sd: float = 0.0
    # MRI
    t1w_contrast: Mapping[str, float] = field(
        default_factory=lambda: {"gm": 0.65, "wm": 1.0, "csf": 0.2, "lesion": 0.35}
    )
    flair_contrast: Mapping[str, float] = field(
        default_factory=lambda: {"gm": 0.82, "wm": 0.68, "csf": 0.1, "lesion": 1.35}
    )
    t2w_contrast: Mapping[str, float] = field(
        default_factory=lambda: {"gm": 0.8, "wm": 0.6, "csf": 1.6, "lesion": 1.3}
    )
    # ADC in 1e-3 mm^2/s (times mri_gain: 1e-6 mm^2/s); acute lesions restrict diffusion.
    adc_contrast: Mapping[str, float] = field(
        default_factory=lambda: {"gm": 0.8, "wm": 0.7, "csf": 3.0, "lesion": 0.45}
    )
    contrast_sd: float = 0.0
    mri_fwhm_mm: float = 1.0
    bias_rms: float = 0.05
    mri_gain: float = 1000.0
    mri_gain_sd: float = 0.2
    snr_range: tuple[float, float] = (20.0, 30.0)
    # PET
    pet_uptake: Mapping[str, float] = field(
        default_factory=lambda: {"gm": 4.0, "wm": 1.0, "csf": 0.05}
    )
    pet_regional: Mapping[str, float] = field(
        default_factory=lambda: {
            "Thalamus": 1.15,
            "Caudate|Putamen": 1.12,
            "PCu_|PCgG_": 1.10,
            "Calc_|Cun_|LiG_": 1.08,
            "Cerebell": 0.85,
            "Hippocampus|Amygdala|PHG_|Ent_": 0.80,
        }
    )
    pet_physiological_rms: float = 0.06
    pet_fwhm_mm: float = 6.0
    pet_fwhm_range: tuple[float, float] | None = None
    pet_regional_sd: float = 0.0
    pet_unit: float = 2.0
    pet_scale_range: tuple[float, float] = (0.7, 1.3)
    pet_noise: float = 0.05
    pet_noise_fwhm_mm: float = 4.0
    # patients
    metabolism_range: tuple[float, float] = (0.35, 1.0)
    metabolism_beta: tuple[float, float] = (1.0, 2.0)
    brainstem_sensitivity: float = 0.3
    subcortical_sensitivity: float = 0.5
    damage_probability: Mapping[str, float] = field(
        default_factory=lambda: {
            "brainstem": 0.3,
            "thalamus": 0.45,
            "posteromedial": 0.45,
            "frontal": 0.4,
        }
    )
    severity_range: tuple[float, float] = (0.2, 1.0)
    pet_drop: float = 0.7
    damage_smoothing_fwhm_mm: float = 8.0
    lesion_threshold: float = 0.5
    lesion_radius_mm: tuple[float, float] = (4.0, 10.0)
    lesion_edge_mm: float = 1.5
    lesion_pet_drop: float = 0.8
    max_distractors: int = 2
    # ground truth
    mask_threshold: float = 0.10
    # names of the preset and scanner site this configuration came from (records only)
    variation: str = "default"
    site: str = ""
    crs: CRSModel = field(default_factory=CRSModel)
    # space of the written images: "mni", or "native" (a scanner pose, voxel size and warp
    # per subject, see anomaly.simulate.native)
    space: str = "mni"

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON representation (for ``simulation.json``)."""
        return asdict(self)
