"""A data source beside the pipeline: simulated healthy and coma cohorts with ground truth.

Writes BIDS datasets (T1w, FLAIR, FDG PET) built from the MNI152 templates that nilearn
ships, with lesions, global hypometabolism and CRS-R labels whose ground truth lies in
``derivatives/simulation/``. See ``docs/simulator.md``.

Modules, in the order of the data flow: ``config`` (parameters), ``seeds`` (random
streams), ``checks`` (parameter validation), ``template`` (MNI152 tissue maps and
atlas), ``simulator`` (template + configuration), ``anatomy`` (deformation, ageing),
``variation`` (named presets and scanner sites), ``lesions`` (damage and lesions), ``scanners`` (MRI and PET images), ``labels``
(CRS-R), ``subject`` (one subject), ``writer`` (files), ``workers`` (running
subjects), ``cohort`` (the dataset); ``truth`` reads a written patient's truth masks
back for scoring.
"""

from anomaly.simulate.cohort import simulate_cohort
from anomaly.simulate.config import (
           ALL_MODALITIES,
           CAUSAL_FAMILIES,
           DISTRACTOR_REGIONS,
           MODALITIES,
           CRSModel,
           SimulationConfig,
)
from anomaly.simulate.labels import simulate_labels
from anomaly.simulate.subject import SimulatedSubject, simulate_subject
from anomaly.simulate.variation import SITES, VARIATIONS, simulation_config

__all__ = [
    "ALL_MODALITIES",
    "CAUSAL_FAMILIES",
    "DISTRACTOR_REGIONS",
    "MODALITIES",
    "SITES",
    "VARIATIONS",
    "CRSModel",
    "SimulatedSubject",
    "SimulationConfig",
    "simulate_cohort",
    "simulate_labels",
    "simulate_subject",
    "simulation_config",
]
