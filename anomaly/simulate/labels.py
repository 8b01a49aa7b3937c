"""CRS-R labels: the behavioural model, the clinical ground-truth rows, :func:`simulate_labels`.

**CRS-R** (see :class:`~anomaly.simulate.config.CRSModel`)::

    arousal   = (1 - 0.9 s_brainstem) (1 - 0.5 s_thalamus)
    awareness = clip((g - 0.38) / 0.62, 0, 1) (1 - 0.6 s_posteromedial) (1 - 0.4 s_frontal)
    crs_true  = 23 arousal (0.25 + 0.75 awareness)
    crs       = clip(round(crs_true + N(0, label_noise_sd)), 0, 23)

The 0.25 term gives reflexive behaviour (about 6 points) to patients with preserved
arousal and no awareness (UWS-like); brainstem damage takes the score towards 0 (coma).
With the default sampling about 65 % of true scores (60 % of observed ones) are
below 8 (UWS-like) and the median is about 6.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from anomaly.simulate.anatomy import demographics
from anomaly.simulate.checks import check_count, check_fraction, check_seed
from anomaly.simulate.config import CAUSAL_FAMILIES, SimulationConfig
from anomaly.simulate.lesions import sample_damage
from anomaly.simulate.seeds import stream, subject_seed

__all__ = ["clinical_row", "crs_scores", "simulate_labels"]


def crs_scores(
    cfg: SimulationConfig, ss: np.random.SeedSequence, g: float, damage: Mapping[str, float],
    label_noise_sd: float,
) -> tuple[float, float, float, int]:
    """Arousal, awareness, true and observed CRS-R (label stream)."""
    noise = stream(ss, "label").standard_normal()
    crs_true = cfg.crs(g, damage)
    crs = int(np.clip(np.round(crs_true + label_noise_sd * noise), 0, cfg.crs.crs_max))
    return cfg.crs.arousal(damage), cfg.crs.awareness(g, damage), crs_true, crs


def simulate_labels(
    n_patients: int,
    *,
    seed: int = 0,
    label_noise_sd: float = 1.5,
    config: SimulationConfig | None = None,
) -> pd.DataFrame:
    """Patients' clinical ground truth without images (fast).

    The values are those :func:`~anomaly.simulate.cohort.simulate_cohort` writes for
    the same ``seed`` (age, sex, g, severities, distractors, CRS-R), so this is a
    quick way to study the CRS-R model, e.g. the score distribution or a regressor
    given the causal variables.

    Parameters
    ----------
    n_patients : int
        Number of patients (``sub-pt001``...).
    seed : int, default=0
        As in :func:`~anomaly.simulate.cohort.simulate_cohort`.
    label_noise_sd : float, default=1.5
        SD of the CRS-R label noise.
    config : SimulationConfig, optional
        Model parameters.

    Returns
    -------
    pandas.DataFrame
        Columns participant_id, age, sex, crs_true, crs, arousal, awareness,
        global_metabolism, ``damage_<family>``, ``distractor_<k>_region`` and
        ``distractor_<k>_damage``.
    """
    n_patients = check_count(n_patients, "n_patients")
    seed = check_seed(seed)
    label_noise_sd = check_fraction(label_noise_sd, "label_noise_sd", upper=None)
    cfg = config if config is not None else SimulationConfig()
    width = max(3, len(str(n_patients)))
    rows = []
    for i in range(n_patients):
        ss = subject_seed(seed, "patient", i)
        age, sex = demographics(cfg, stream(ss, "anatomy"))
        g, damage, distractors, _ = sample_damage(cfg, stream(ss, "damage"), True)
        arousal, awareness, crs_true, crs = crs_scores(cfg, ss, g, damage, label_noise_sd)
        rows.append(clinical_row(f"sub-pt{i + 1:0{width}d}", "patient", age, sex, g, damage,
                                 distractors, arousal, awareness, crs_true, crs, cfg))
    columns = None if rows else ["participant_id", "group", "age", "sex", "crs_true", "crs"]
    table = pd.DataFrame(rows, columns=columns)
    table["crs"] = pd.array(table["crs"], dtype="Int64")
    return table


def clinical_row(participant_id: str, group: str, age: int, sex: str, g: float,
                 damage: Mapping[str, float], distractors: Sequence[tuple[str, float]],
                 arousal: float | None, awareness: float | None, crs_true: float | None,
                 crs: int | None, cfg: SimulationConfig) -> dict[str, Any]:
    """One row of truth.tsv, up to the image-dependent columns."""
    def rounded(x: float | None, digits: int) -> float | None:
        return None if x is None else round(float(x), digits)

    row: dict[str, Any] = {
        "participant_id": participant_id,
        "group": group,
        "age": age,
        "sex": sex,
        "crs_true": rounded(crs_true, 3),
        "crs": crs,
        "arousal": rounded(arousal, 4),
        "awareness": rounded(awareness, 4),
        "global_metabolism": round(g, 4),
    }
    row.update({f"damage_{fam}": round(damage.get(fam, 0.0), 4) for fam in CAUSAL_FAMILIES})
    for i in range(cfg.max_distractors):
        region, s = distractors[i] if i < len(distractors) else (None, 0.0)
        row[f"distractor_{i + 1}_region"] = region
        row[f"distractor_{i + 1}_damage"] = round(s, 4)
    return row
