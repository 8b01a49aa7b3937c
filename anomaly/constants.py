"""Facts that several stages share, defined once.

Imports nothing: every module of the package may use it.
"""

from __future__ import annotations

#: Template space of every map the toolkit writes (BIDS ``space-`` label).
SPACE_LABEL = "MNI152NLin2009cAsym"
#: The ``space-`` entity of derivative file names.
SPACE = f"space-{SPACE_LABEL}"

#: Highest Coma Recovery Scale-Revised total; scores are integers 0..CRS_MAX.
CRS_MAX = 23
#: Number of CRS-R levels (0..23).
CRS_LEVELS = CRS_MAX + 1

#: BIDS suffix of the FDG PET modality.
PET = "pet"

#: Rules that combine the modalities' lesion-direction z maps (see :func:`anomaly.normative.maps.combine_anomaly`).
COMBINE_RULES = ("pet-led", "max", "stouffer", "mean")
#: Rule of the combined map for models that do not say (:class:`anomaly.normative.NormativeModel`'s default).
DEFAULT_COMBINE_RULE = "pet-led"
#: How far (z) an MRI deviation must exceed the PET deviation of the same voxel to lead
#: the ``"pet-led"`` map. FDG uptake falls wherever tissue is damaged, so the PET z
#: already carries most focal damage; the MRI z of a patient mostly adds misregistered
#: edges, bias and contrast changes. On every realistic detection cohort measured
#: (README, Benchmarks) letting MRI in only beyond this margin gave the focal AUPRC of the
#: PET z alone (within 0.006) while a strong MRI-only finding (z 6 over a normal PET) still
#: shows (at 4); the maximum over modalities lost 0.005-0.18.
MRI_MARGIN_Z = 2.0

#: Direction in which a lesion pushes each modality, as the sign of the z score that
#: counts as abnormal: -1.0 "lower" (T1w signal, FDG uptake, fractional anisotropy,
#: perfusion), +1.0 "higher" (FLAIR/T2w/PD signal), 0.0 "both" (two-sided: ADC and MD
#: fall in acute cytotoxic oedema and rise in vasogenic oedema and chronic damage; SWI and
#: T2* change either way). A modality not listed is two-sided (see :func:`lesion_sign`).
LESION_SIGN = {"T1w": -1.0, "T2w": 1.0, "FLAIR": 1.0, "PD": 1.0, "pet": -1.0,
               "FA": -1.0, "ADC": 0.0, "MD": 0.0, "cbf": -1.0, "SWI": 0.0, "T2starw": 0.0}

#: The words a user gives for a direction, and the sign each stands for.
LESION_DIRECTIONS = {"lower": -1.0, "higher": 1.0, "both": 0.0}

#: |z| beyond which a voxel counts as abnormal in region tables and figures.
Z_THRESHOLD = 2.0

#: Global cortical metabolism (% of normal) above which awareness is likely
#: (Stender et al. 2016: UWS ~38%, MCS ~56% of normal, boundary ~42%).
AWARENESS_PERCENT = 42.0


def lesion_sign(modality: str, directions: dict[str, str] | None = None) -> float:
    """Sign of an abnormal z for ``modality``: -1.0, +1.0, or 0.0 for two-sided.

    ``directions`` (modality -> "lower" | "higher" | "both", as a user declared them)
    takes precedence over :data:`LESION_SIGN`; a modality in neither is two-sided.
    """
    if directions and modality in directions:
        return LESION_DIRECTIONS[directions[modality]]
    return LESION_SIGN.get(modality, 0.0)


def derivative_name(label: str, *parts: str) -> str:
    """``sub-<label>_space-MNI152NLin2009cAsym_<parts...>`` (parts joined by ``_``)."""
    return "_".join([f"sub-{label}", SPACE, *parts])
