"""Stage 4 of the pipeline: quality control, refusing what a file check cannot see.

A well-formed NIfTI can still be the wrong thing: a PET given as T1w, an inverted
contrast, a brain that is not in MNI space, an impossible age. This package computes a
few robust quality numbers per preprocessed image and compares them with those of the
training controls, which ``fit-normative`` records in the model folder.

Modules, one job each:

- :mod:`~anomaly.qc.metrics`: the numbers of one image (similarity to the controls'
  mean, alignment to the MNI template, grey/white contrast, coverage, SNR, skewness);
- :mod:`~anomaly.qc.reference`: the controls' distribution of every number (JSON in
  the model folder);
- :mod:`~anomaly.qc.decide`: pass, warn or refuse, and why (thresholds in ``RULES``);
- :mod:`~anomaly.qc.covariates`: impossible ages and sexes, ages outside the controls';
- :mod:`~anomaly.qc.pet`: is the PET reference region itself normal, and the global
  cortical level under each reference;
- :mod:`~anomaly.qc.controls`: leave-one-out screening of the training controls;
- :mod:`~anomaly.qc.subject`: one subject's QC (:func:`assess_subject`) and the content
  check alone (:func:`check_alignment`);
- :mod:`~anomaly.qc.masks`: the region masks QC needs on a grid.
"""

from anomaly.qc.controls import ControlScreen, screen_controls
from anomaly.qc.covariates import AGE_LIMITS, age_warning, check_covariates
from anomaly.qc.decide import DECISIONS, RULES, Finding, ImageQC, assess_image
from anomaly.qc.metrics import METRICS, image_metrics
from anomaly.qc.reference import MetricRange, QCReference
from anomaly.qc.subject import (
           SubjectQC,
           assess_subject,
           check_alignment,
           subject_metrics,
)

__all__ = ["AGE_LIMITS", "DECISIONS", "METRICS", "RULES", "ControlScreen", "Finding", "ImageQC", "MetricRange",
           "QCReference", "SubjectQC", "age_warning", "assess_image", "assess_subject", "check_alignment",
           "check_covariates", "image_metrics", "screen_controls", "subject_metrics"]
