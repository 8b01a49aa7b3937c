"""A data source beside the pipeline: simulated healthy and coma cohorts with ground truth.

Writes BIDS datasets (T1w, FLAIR, FDG PET) built from the MNI152 templates that nilearn
ships, with lesions, global hypometabolism and CRS-R labels whose ground truth lies in
``derivatives/simulation/``. See ``docs/simulator.md``.
"""

from anomaly.simulate.cohort import (CAUSAL_FAMILIES, DISTRACTOR_REGIONS, MODALITIES, CRSModel, SimulatedSubject,
                                     SimulationConfig, simulate_cohort, simulate_labels, simulate_subject)

__all__ = ["CAUSAL_FAMILIES", "DISTRACTOR_REGIONS", "MODALITIES", "CRSModel", "SimulatedSubject", "SimulationConfig",
           "simulate_cohort", "simulate_labels", "simulate_subject"]
