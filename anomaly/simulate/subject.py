"""One subject: :func:`simulate_subject` and its result, :class:`SimulatedSubject`.

**Ground truth.** The lesion mask holds the brain voxels where any simulated modality
(noise-free, before bias, gain and scale) differs by more than 10 % from the same
subject without damage (g = 1, no focal damage); the focal mask compares with the
same subject at the same g without focal damage. Masks are computed over every
simulated modality, including one that :func:`~anomaly.simulate.cohort.simulate_cohort`
then records as missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from anomaly.io import AnomalyInputError
from anomaly.simulate.anatomy import Anatomy, demographics, subject_anatomy
from anomaly.simulate.checks import (
    check_fraction,
    check_modalities,
    check_resolution,
    check_seed,
)
from anomaly.simulate.config import ATLAS, CAUSAL_FAMILIES, MODALITIES, SimulationConfig
from anomaly.simulate.labels import crs_scores
from anomaly.simulate.lesions import Damage, place_lesions, sample_damage
from anomaly.simulate.scanners import Scan, render
from anomaly.simulate.seeds import GROUP_CODES, stream
from anomaly.simulate.simulator import Simulator, get_simulator

__all__ = ["SimulatedSubject", "simulate_from_seed", "simulate_subject"]


@dataclass
class SimulatedSubject:
    """One simulated subject (see :func:`simulate_subject`).

    Attributes
    ----------
    images : dict of str to numpy.ndarray
        Modality -> float32 array on the template grid (every simulated modality,
        also one that ``simulate_cohort`` would record as missing). MRI values
        are whole numbers, as scanners store them (the files are int16).
    affine : numpy.ndarray
        4 x 4 voxel-to-MNI transform (RAS+, mm).
    group : {"control", "patient"}
    age : int
    sex : {"M", "F"}
    global_metabolism : float
        ``g``; 1 for controls.
    damage : dict of str to float
        Severity per causal family (:data:`CAUSAL_FAMILIES`).
    distractors : list of (str, float)
        Distractor region name and severity.
    lesions : list of dict
        Structural lesions: family, region, severity, strength, centre_mm, radius_mm.
    arousal, awareness, crs_true : float or None
        CRS-R model values; None for controls.
    crs : int or None
        Observed CRS-R (with label noise); None for controls.
    gains : dict of str to float
        Global intensity factor per modality (MRI gain, PET SUV-like scale).
    lesion_mask, focal_mask : numpy.ndarray of bool or None
        Ground-truth masks (patients only, unless not requested).
    brain_mask : numpy.ndarray of bool or None
        The subject's own brain (its deformed, aged anatomy, not the template), with the
        truth masks: the voxels over which detection is scored.
    twins : dict of str to dict of str to numpy.ndarray or None
        With ``return_twins=True``: ``"healthy"`` (g = 1, no focal damage) and
        ``"global"`` (same g, no focal damage) images of the same subject, with the
        same anatomy, bias, gain and noise.
    """

    images: dict[str, np.ndarray]
    affine: np.ndarray
    group: str
    age: int
    sex: str
    global_metabolism: float
    damage: dict[str, float]
    distractors: list[tuple[str, float]]
    lesions: list[dict[str, Any]]
    arousal: float | None
    awareness: float | None
    crs_true: float | None
    crs: int | None
    gains: dict[str, float]
    lesion_mask: np.ndarray | None = None
    focal_mask: np.ndarray | None = None
    brain_mask: np.ndarray | None = None
    twins: dict[str, dict[str, np.ndarray]] | None = None


def simulate_subject(
    seed: int | np.random.SeedSequence = 0, *, group: str = "control", resolution: float = 2.0,
    modalities: Sequence[str] = MODALITIES, age: int | None = None, sex: str | None = None,
    global_metabolism: float | None = None, damage: Mapping[str, float] | None = None,
    distractors: Sequence[tuple[str, float]] | None = None, label_noise_sd: float = 1.5,
    masks: bool = True, return_twins: bool = False, config: SimulationConfig | None = None,
) -> SimulatedSubject:
    """Simulate one subject's images, ground truth and CRS-R.

    Parameters
    ----------
    seed : int or numpy.random.SeedSequence, default=0
        Randomness of this subject. Control | patient ``i`` (0-based) of the cohort
        of ``seed`` uses ``SeedSequence(seed, spawn_key=(0 | 1, i))``.
    group : {"control", "patient"}, default="control"
        Controls have no damage (g = 1) and no CRS-R.
    resolution : float, default=2.0
        Voxel size in mm of the MNI152 template grid (2, 3 or 4 are typical).
    modalities : sequence of str, default=("T1w", "FLAIR", "pet")
        Modalities to simulate.
    age, sex : optional
        Override the sampled age (years) or sex ("M" or "F").
    global_metabolism : float, optional
        Override the patient's global cortical metabolism ``g`` (fraction of normal).
    damage : mapping of str to float, optional
        Override the severities (0..1) of the causal families; families left out get 0.
    distractors : sequence of (str, float), optional
        Override the distractor lesions: Neuromorphometrics region names (see
        ``DISTRACTOR_REGIONS``) and severities; ``[]`` for none.
    label_noise_sd : float, default=1.5
        SD of the Gaussian noise added to the true CRS-R before rounding.
    masks : bool, default=True
        Compute the lesion and focal masks (patients).
    return_twins : bool, default=False
        Also return the images of the same subject without damage (``twins``).
    config : SimulationConfig, optional
        Model parameters; defaults to ``SimulationConfig()``.

    Returns
    -------
    SimulatedSubject

    Raises
    ------
    AnomalyInputError
        Invalid parameter, or damage requested for a control.

    Notes
    -----
    Overrides replace values after they are drawn, so the rest of the subject (anatomy,
    lesion shapes, bias fields, noise) stays: the same person with more damage.
    """
    _check_overrides(group, sex, global_metabolism, damage, distractors)
    config = config if config is not None else SimulationConfig()
    sim = get_simulator(check_resolution(resolution), config, check_modalities(modalities))
    _check_distractors(sim, distractors)
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(
        check_seed(seed))
    noise_sd = check_fraction(label_noise_sd, "label_noise_sd", upper=None)
    return simulate_from_seed(sim, ss, group, age=age, sex=sex, global_metabolism=global_metabolism,
                              damage=damage, distractors=distractors, label_noise_sd=noise_sd,
                              masks=masks, twins=return_twins)


def _check_overrides(group: str, sex: str | None, global_metabolism: float | None,
                     damage: Mapping[str, float] | None,
                     distractors: Sequence[tuple[str, float]] | None) -> None:
    """Group, sex and damage overrides of :func:`simulate_subject` (distractors: later)."""
    if group not in GROUP_CODES:
        raise AnomalyInputError(f"group: expected 'control' or 'patient', got {group!r}")
    if group == "control" and (global_metabolism not in (None, 1.0) or damage or distractors):
        raise AnomalyInputError("group: damage parameters are only allowed for group='patient'")
    if sex not in (None, "M", "F"):
        raise AnomalyInputError(f"sex: expected 'M' or 'F', got {sex!r}")
    if global_metabolism is not None:
        check_fraction(global_metabolism, "global_metabolism", upper=None)
    if damage is not None:
        unknown = set(damage) - set(CAUSAL_FAMILIES)
        if unknown:
            raise AnomalyInputError(
                f"damage: unknown families {sorted(unknown)}; expected {list(CAUSAL_FAMILIES)}"
            )
        for fam, s in damage.items():
            check_fraction(s, f"damage[{fam!r}]")


def _check_distractors(sim: Simulator, distractors: Sequence[tuple[str, float]] | None) -> None:
    """Distractor regions known to the atlas, severities in 0..1."""
    if distractors is None:
        return
    for region, s in distractors:
        if region not in sim.tpl.names:
            raise AnomalyInputError(f"distractors: unknown {ATLAS} region {region!r}")
        check_fraction(s, f"distractors[{region!r}]")


def simulate_from_seed(sim: Simulator, ss: np.random.SeedSequence, group: str, *,
                       age: int | None = None, sex: str | None = None,
                       global_metabolism: float | None = None,
                       damage: Mapping[str, float] | None = None,
                       distractors: Sequence[tuple[str, float]] | None = None,
                       label_noise_sd: float = 1.5, masks: bool = True,
                       twins: bool = False) -> SimulatedSubject:
    """Simulate one subject from its SeedSequence (the engine of the public API).

    Arguments are checked (see :func:`simulate_subject`); ``twins`` is ``return_twins``.
    """
    cfg = sim.config
    patient = group == "patient"
    rng = stream(ss, "anatomy")
    drawn_age, drawn_sex = demographics(cfg, rng)
    age = drawn_age if age is None else int(age)
    sex = drawn_sex if sex is None else sex
    anat = subject_anatomy(sim, rng, age, sex)
    dmg = _damage(sim, ss, anat, patient, global_metabolism, damage, distractors)

    want_masks = masks and patient
    scans = {m: render(sim, stream(ss, m), m, anat, dmg, want_masks or twins)
             for m in sim.modalities}
    lesion_mask, focal_mask, brain_mask = _truth_masks(sim, anat, scans) if want_masks else (None,) * 3
    arousal = awareness = crs_true = crs = None
    if patient:
        arousal, awareness, crs_true, crs = crs_scores(cfg, ss, dmg.g, dmg.families, label_noise_sd)
    return SimulatedSubject(
        images={m: scan.finish(scan.clean) for m, scan in scans.items()},
        affine=sim.tpl.affine.copy(), group=group, age=age, sex=sex,
        global_metabolism=float(dmg.g), damage=dmg.families, distractors=list(dmg.distractors),
        lesions=[lesion.as_dict() for lesion in dmg.lesions],
        arousal=arousal, awareness=awareness, crs_true=crs_true, crs=crs,
        gains={m: scan.gain for m, scan in scans.items()},
        lesion_mask=lesion_mask, focal_mask=focal_mask, brain_mask=brain_mask,
        twins={key: {m: scan.finish(scan.variants[key]) for m, scan in scans.items()}
               for key in ("healthy", "global")} if twins else None,
    )


def _damage(sim: Simulator, ss: np.random.SeedSequence, anat: Anatomy, patient: bool,
            global_metabolism: float | None, damage: Mapping[str, float] | None,
            distractors: Sequence[tuple[str, float]] | None) -> Damage:
    """Draw the damage (damage stream), apply the overrides and place the lesions."""
    g, families, dis, geometry = sample_damage(sim.config, stream(ss, "damage"), patient)
    if global_metabolism is not None:
        g = float(global_metabolism)
    if damage is not None:
        families = {fam: float(damage.get(fam, 0.0)) for fam in CAUSAL_FAMILIES}
    if distractors is not None:
        dis = [(str(r), float(s)) for r, s in distractors]
    out = Damage(g=g, families=families, distractors=dis, lesions=[], weight=None)
    if out.focal:
        out.lesions, w = place_lesions(sim, anat, families, dis, geometry)
        out.weight = w if np.any(w) else None
    return out


def _truth_masks(sim: Simulator, anat: Anatomy,
                 scans: Mapping[str, Scan]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lesion and focal masks on the grid (voxels where any modality differs from a twin)
    and the subject's brain mask."""
    threshold = sim.config.mask_threshold
    inside = sim.to_box(anat.brain) > 0.5
    lesion = np.zeros(sim.tpl.box_shape, bool)
    focal = np.zeros(sim.tpl.box_shape, bool)
    for scan in scans.values():
        lesion |= _differs(scan.clean, scan.variants["healthy"], inside, threshold)
        focal |= _differs(scan.clean, scan.variants["global"], inside, threshold)
    return sim.to_grid(lesion, bool), sim.to_grid(focal, bool), sim.to_grid(inside, bool)


def _differs(
    damaged: np.ndarray, healthy: np.ndarray, inside: np.ndarray, threshold: float
) -> np.ndarray:
    """Box voxels inside the brain where the relative change exceeds ``threshold``."""
    floor = 0.05 * float(healthy[inside].max()) if inside.any() else 0.0
    return inside & (np.abs(damaged - healthy) > threshold * np.maximum(healthy, floor))
