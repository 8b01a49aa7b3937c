"""QC of one subject at scoring: every image, the covariates and the PET reference.

:func:`assess_subject` computes the metrics of each present image
(:mod:`anomaly.qc.metrics`), decides about each (:mod:`anomaly.qc.decide`), checks the
covariates and the PET reference region, and returns a :class:`SubjectQC` whose
:meth:`~SubjectQC.to_dict` goes into ``values["qc"]`` of ``_scores.json``.
:func:`check_alignment` is the content check alone (is each image a brain in MNI
space?).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anomaly.constants import PET
from anomaly.io import AnomalyInputError
from anomaly.preprocess import Preprocessed, template_images
from anomaly.qc.covariates import age_warning, check_covariates
from anomaly.qc.decide import ImageQC, assess_image, judge_metric
from anomaly.qc.masks import qc_masks
from anomaly.qc.metrics import image_metrics
from anomaly.qc.pet import pet_reference_qc
from anomaly.qc.reference import QCReference

NO_REFERENCE = "this model records no controls' QC distribution (fitted before QC existed): nothing was compared"


@dataclass
class SubjectQC:
    """The QC of one subject.

    Attributes
    ----------
    images : dict of str to ImageQC
        Per present modality.
    warnings : list of str
        Every warning (image findings, age, PET reference), one line each.
    pet_reference : dict or None
        :func:`anomaly.qc.pet.pet_reference_qc` output when a PET was given.
    compared : bool
        Whether a controls' distribution was available.
    forced : bool
        Whether a refusal was overridden (``score --force``).
    """

    images: dict[str, ImageQC] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    pet_reference: dict[str, Any] | None = None
    compared: bool = True
    forced: bool = False

    @property
    def decision(self) -> str:
        """The subject's decision: "refuse" if any image is refused, "warn" if any warning, else "pass"."""
        if any(q.decision == "refuse" for q in self.images.values()):
            return "refuse"
        return "warn" if self.warnings else "pass"

    def refusal(self) -> str | None:
        """The first refused image's one-line message, or None."""
        return next((msg for q in self.images.values() if (msg := q.refusal())), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary for ``values["qc"]``."""
        out = {"decision": self.decision, "forced": self.forced, "compared": self.compared,
               "warnings": list(self.warnings), "images": {m: q.to_dict() for m, q in self.images.items()}}
        if not self.compared:
            out["note"] = NO_REFERENCE
        if self.pet_reference is not None:
            out["pet_reference"] = self.pet_reference
        return out


def subject_metrics(prep: Preprocessed, control_mean: np.ndarray | None) -> dict[str, dict[str, float | None]]:
    """:func:`~anomaly.qc.metrics.image_metrics` of each present image.

    Parameters
    ----------
    prep : Preprocessed
        The subject on the model grid.
    control_mean : numpy.ndarray or None
        The controls' mean image, shape (C, X, Y, Z) in ``prep.modalities`` order.
    """
    templates = template_images(prep.grid)
    brain = templates["mask"] > 0.5
    return {m: image_metrics(prep.data[c], brain, templates, None if control_mean is None else control_mean[c])
            for c, m in enumerate(prep.modalities) if prep.present[c]}


def assess_subject(prep: Preprocessed, reference: QCReference | None, control_mean: np.ndarray | None, *,
                   pet_reference: str = "cerebellum", age: float | None = None, sex: str | None = None,
                   force: bool = False, where: str = "age/sex", age_modelled: bool = True) -> SubjectQC:
    """QC of one preprocessed subject against the training controls.

    Parameters
    ----------
    prep : Preprocessed
    reference : QCReference or None
        The model's controls' distribution (None for a model without QC).
    control_mean : numpy.ndarray or None
        The model's mean control image (C, X, Y, Z).
    pet_reference : str, default="cerebellum"
        The model's PET reference region.
    age, sex : optional
        Covariates; impossible values raise.
    force : bool, default=False
        Record that refusals are overridden (the caller decides what to do with them).
    where : str, default="age/sex"
        What an impossible covariate's message names (an option, or a file and row).
    age_modelled : bool, default=True
        Whether the normative model has an age term (worded in the age warning).

    Returns
    -------
    SubjectQC

    Raises
    ------
    AnomalyInputError
        For an age outside 0-120 or a sex other than M/F.
    """
    check_covariates(age, sex, where=where)
    result = SubjectQC(compared=reference is not None, forced=force)
    for modality, metrics in subject_metrics(prep, control_mean).items():
        source = str(prep.qc.get(modality, {}).get("source", modality))
        image = assess_image(modality, source, metrics, reference)
        result.images[modality] = image
        result.warnings += [f"{source}: {f.message}" for f in image.findings if f.level == "warn"]
    if reference is not None:
        message = age_warning(age, reference.age_range, age_modelled=age_modelled)
        if message:
            result.warnings.append(message)
    if PET in prep.modalities and prep.present[prep.modalities.index(PET)] and control_mean is not None:
        c = prep.modalities.index(PET)
        result.pet_reference = pet_reference_qc(prep.data[c], control_mean[c], qc_masks(prep.grid), pet_reference,
                                                reference.pet_ratios if reference is not None else {})
        if result.pet_reference["warning"]:
            result.warnings.append(result.pet_reference["warning"])
    return result


def check_alignment(prep: Preprocessed, reference: QCReference | None) -> dict[str, float | None]:
    """The content check: is every image of ``prep`` a brain in MNI space?

    Computes the normalised mutual information of each present image with the MNI152
    T1 template inside the brain mask (``alignment`` of :mod:`anomaly.qc.metrics`,
    contrast-independent) and compares it with the training controls' range.

    Parameters
    ----------
    prep : Preprocessed
        A subject on the model grid (``NormativeModel.preprocess`` output).
    reference : QCReference or None
        The model's ``qc_reference_``; None: the values are returned unchecked.

    Returns
    -------
    dict of str to float or None
        Modality -> alignment value.

    Raises
    ------
    AnomalyInputError
        One line naming the file, the value against the controls' range and saying to
        run ``anomaly prepare``, when an image is far below the controls' alignment.
    """
    values = {m: metrics["alignment"] for m, metrics in subject_metrics(prep, None).items()}
    if reference is not None:
        for modality, value in values.items():
            finding = judge_metric(modality, "alignment", value, reference)
            if finding is not None and finding.level == "refuse":
                source = prep.qc.get(modality, {}).get("source", modality)
                raise AnomalyInputError(f"{source}: {finding.message}")
    return values
