"""A data source beside the pipeline: simulated healthy and coma cohorts with ground truth.

Writes BIDS datasets (T1w, FLAIR, FDG PET) built from the MNI152 templates that nilearn
ships, with lesions, global hypometabolism and CRS-R labels whose ground truth lies in
``derivatives/simulation/``. See ``docs/simulator.md``.

Modules, in the order of the data flow: ``config`` (parameters), ``seeds`` (random
streams), ``checks`` (parameter validation), ``template`` (MNI152 tissue maps and
atlas), ``simulator`` (template + configuration), ``anatomy`` (deformation, ageing),
``lesions`` (damage and lesions), ``scanners`` (MRI and PET images), ``labels``
(CRS-R), ``subject`` (one subject), ``writer`` (files), ``workers`` (running
subjects), ``cohort`` (the dataset).
"""

from anomaly.simulate.cohort import simulate_cohort
from anomaly.simulate.config import (
           CAUSAL_FAMILIES,
           DISTRACTOR_REGIONS,
           MODALITIES,
           CRSModel,
           SimulationConfig,
)
from anomaly.simulate.labels import simulate_labels
from anomaly.simulate.subject import SimulatedSubject, simulate_subject

__all__ = [
    "CAUSAL_FAMILIES",
    "DISTRACTOR_REGIONS",
    "MODALITIES",
    "CRSModel",
    "SimulatedSubject",
    "SimulationConfig",
    "simulate_cohort",
    "simulate_labels",
    "simulate_subject",
]
