"""Random streams of the simulator.

Subject ``i`` of a group draws from its own ``SeedSequence(seed, spawn_key=(group, i))``,
split into independent streams (anatomy, damage, CRS-R label noise, one per modality):
results do not depend on the number of workers, a subject does not change when the
cohort grows, and asking for fewer modalities leaves the others unchanged. The same
seed gives byte-identical arrays.
"""

from __future__ import annotations

import numpy as np

from anomaly.constants import PET

__all__ = ["GROUP_CODES", "MISSING_STREAM", "stream", "subject_seed"]

#: First spawn key of a subject's SeedSequence, per group.
GROUP_CODES = {"control": 0, "patient": 1}
#: Cohort-level spawn key for the choice of missing modalities.
MISSING_STREAM = 2
# Sub-streams of a subject's SeedSequence: adding one never shifts the others.
_STREAM = {"anatomy": 0, "damage": 1, "label": 2, "T1w": 3, "FLAIR": 4, PET: 5, "T2w": 6, "ADC": 7}


def stream(ss: np.random.SeedSequence, name: str) -> np.random.Generator:
    """Independent generator for one part (``_STREAM`` key) of a subject's simulation."""
    child = np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, _STREAM[name]))
    return np.random.default_rng(child)


def subject_seed(seed: int, group: str, index: int) -> np.random.SeedSequence:
    """SeedSequence of subject ``index`` (0-based) of ``group`` in the cohort of ``seed``."""
    return np.random.SeedSequence(seed, spawn_key=(GROUP_CODES[group], index))
