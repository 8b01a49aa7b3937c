"""Decide what to do with an image from its QC numbers: score it, warn, or refuse it.

Every rule compares a metric with the training controls' distribution
(:class:`~anomaly.qc.reference.QCReference`). Lesions and diffuse hypometabolism are
what the toolkit measures, so the rules must not refuse them: a refusal needs the
image to have lost most of what makes the controls' images alike, measured as the
*retained fraction* ``(value - null) / (control median - null)``, where ``null`` is the
value of an image that carries no such information (correlation 0, mutual
information 1, no grey/white contrast). The thresholds (:data:`RULES`) were set on
simulated cohorts so that no control and no simulated patient is refused while
mislabelled modalities, inverted contrasts and misaligned brains are (README,
"Quality control", gives the measured margins).

Checks are tried in the order of :data:`RULES`; the first refusal names the image, the
check and the value against the control range on one line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from anomaly.constants import PET
from anomaly.qc.reference import MetricRange, QCReference

#: Decisions, from best to worst.
DECISIONS = ("pass", "warn", "refuse")


@dataclass(frozen=True)
class Rule:
    """How one metric decides.

    Attributes
    ----------
    null : float
        Value of an image without the information the metric measures.
    refuse_below : float or None
        Refuse when the retained fraction is below this (None: never refuses).
    warn_below : float or None
        Warn when the retained fraction is below this.
    label : str
        What the metric is, in messages.
    hint : str
        What a refusal probably means and what to do.
    refuse_above : float or None
        Refuse when the retained fraction is above this (more than the controls have).
    above_hint : str
        What a refusal above means.
    consistent_sign : bool
        Decide only when the controls agree on the sign (|median| > 3 scales and
        the whole range on one side of ``null``), e.g. the grey/white contrast of
        FLAIR is near 0 and is not used.
    """

    null: float
    refuse_below: float | None
    warn_below: float | None
    label: str
    hint: str
    refuse_above: float | None = None
    above_hint: str = ""
    consistent_sign: bool = False


PREPARE_HINT = "the brain does not look aligned to MNI space: run `anomaly prepare` on it first"

#: The deciding metrics, in the order they are checked (alignment first: its hint is specific).
#: Diseased brains lower similarity, and for PET alignment and contrast too (severe
#: hypometabolism flattens the grey/white pattern): the lowest retained fractions of 40
#: simulated patients were 0.39, 0.31 and 0.41; wrong images reach 0.03-0.29. With the
#: realistic simulator (PET resolution down to 9 mm, regional physiology), 4 of 100
#: patients with the deepest cortical hypometabolism kept only 0.11-0.15 of the
#: controls' PET contrast, and one patient of a held-out realistic cohort (cortical
#: metabolism near 40 % of normal, PET resolution 9 mm) reached -0.06: a flat grey/white
#: pattern is what the most severe coma looks like, so for PET contrast refuses only a
#: clearly reversed one (:data:`PET_RULES`: below -0.3; the wrong images of the QC
#: benchmark reach -0.6 to -1.0) and warns below 0.3. MRI contrast is not flattened by
#: disease (patients' lowest retained fraction 0.93 for T1w) but is by a mislabelled
#: modality (FLAIR given as T1w: 0.04-0.14), so there it refuses below 0.2.
RULES: dict[str, Rule] = {
    # Above: a T1w given as FLAIR or PET reaches 2.3-2.5 times the controls' information;
    # a realistic patient's FLAIR with large bright lesions reached 2.0 (refused at 2.0).
    "alignment": Rule(null=1.0, refuse_below=0.18, warn_below=0.25, refuse_above=2.2,
                      label="mutual information with the MNI template", hint=PREPARE_HINT,
                      above_hint="far more structured than the controls' images: a mislabelled modality?"),
    "contrast": Rule(null=0.0, refuse_below=0.2, warn_below=0.3, consistent_sign=True,
                     label="grey/white matter contrast",
                     hint="contrast reversed or missing: a mislabelled modality or inverted intensities?"),
    "similarity": Rule(null=0.0, refuse_below=0.2, warn_below=None,
                       label="correlation with the controls' mean image",
                       hint="not like the controls' images: a mislabelled modality?"),
    "coverage": Rule(null=0.0, refuse_below=None, warn_below=0.9,
                     label="brain coverage", hint="part of the brain is outside the image"),
    "snr": Rule(null=0.0, refuse_below=None, warn_below=0.5,
                label="signal-to-noise ratio", hint="much noisier than the controls' images"),
}


#: PET's own rules, where disease moves a metric further than in MRI (see :data:`RULES`).
PET_RULES: dict[str, Rule] = {
    "contrast": dataclasses.replace(RULES["contrast"], refuse_below=-0.3),
}


def rule_for(modality: str, metric: str) -> Rule | None:
    """The rule that decides ``metric`` for ``modality`` (None: the metric does not decide)."""
    return (PET_RULES if modality == PET else {}).get(metric) or RULES.get(metric)


@dataclass(frozen=True)
class Finding:
    """One metric of one image outside what the controls allow.

    Attributes
    ----------
    modality, metric : str
    value : float
    level : {"warn", "refuse"}
    message : str
        One line: the check, the value against the control range, and the hint.
    """

    modality: str
    metric: str
    value: float
    level: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return {"modality": self.modality, "metric": self.metric, "value": round(self.value, 4),
                "level": self.level, "message": self.message}


@dataclass
class ImageQC:
    """QC of one image: its metrics, the decision and the findings behind it.

    Attributes
    ----------
    modality, source : str
    metrics : dict of str to float or None
    decision : {"pass", "warn", "refuse"}
    findings : list of Finding
    compared : bool
        False when the model has no control distribution to compare with.
    """

    modality: str
    source: str
    metrics: dict[str, float | None]
    decision: str = "pass"
    findings: list[Finding] = field(default_factory=list)
    compared: bool = True

    @property
    def reason(self) -> str:
        """The findings' messages joined (empty when the image passes)."""
        return "; ".join(f.message for f in self.findings)

    def refusal(self) -> str | None:
        """The one-line refusal (file, check, value, control range), or None."""
        first = next((f for f in self.findings if f.level == "refuse"), None)
        return None if first is None else f"{self.source}: {first.message}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (for ``_scores.json``)."""
        return {"source": self.source, "decision": self.decision, "compared": self.compared,
                "metrics": {k: (None if v is None else round(float(v), 4)) for k, v in self.metrics.items()},
                "findings": [f.to_dict() for f in self.findings]}


def retained_fraction(value: float, rng: MetricRange, rule: Rule) -> float | None:
    """``(value - null) / (median - null)``; None when the controls' median is the null value.

    Parameters
    ----------
    value : float
    rng : MetricRange
    rule : Rule
    """
    span = rng.median - rule.null
    if span == 0 or (rule.consistent_sign and not _consistent(rng, rule)):
        return None
    return (value - rule.null) / span


def _consistent(rng: MetricRange, rule: Rule) -> bool:
    """Whether every control lies on one side of the null value, well away from it."""
    one_side = rng.low > rule.null or rng.high < rule.null
    return one_side and abs(rng.median - rule.null) > 3 * rng.scale


def judge_metric(modality: str, metric: str, value: float | None,
                 reference: QCReference) -> Finding | None:
    """The finding of one metric, or None when it is within what the controls allow.

    A metric is refused (or warned about) only below the controls' smallest value too,
    so that no image as typical as a control is ever flagged.

    Parameters
    ----------
    modality, metric : str
    value : float or None
    reference : QCReference
    """
    rule = rule_for(modality, metric)
    rng = reference.range(modality, metric)
    if rule is None or rng is None or value is None:
        return None
    fraction = retained_fraction(value, rng, rule)
    if fraction is None:
        return None
    # Never flag a value on the controls' side of their extremes (as typical as a control).
    below = not value_within_controls(value, rng, rule)
    above = value > rng.high if rng.median >= rule.null else value < rng.low
    checks = (("refuse", rule.refuse_above, rule.above_hint, above and _beyond(fraction, rule.refuse_above, +1)),
              ("refuse", rule.refuse_below, rule.hint, below and _beyond(fraction, rule.refuse_below, -1)),
              ("warn", rule.warn_below, f"possibly {rule.hint} (severe disease can lower it too)",
               below and _beyond(fraction, rule.warn_below, -1)))
    for level, threshold, hint, flagged in checks:
        if flagged:
            limit = rule.null + threshold * (rng.median - rule.null)
            message = (f"{modality} {rule.label} {value:.3g} is outside the training controls' range "
                       f"({rng.low:.3g} to {rng.high:.3g}, n={rng.n}; {level} beyond {limit:.3g}): {hint}")
            return Finding(modality, metric, float(value), level, message)
    return None


def _beyond(fraction: float, threshold: float | None, side: int) -> bool:
    """Whether ``fraction`` is past ``threshold`` (above for side +1, below for -1); False for None."""
    return threshold is not None and side * (fraction - threshold) > 0


def value_within_controls(value: float, rng: MetricRange, rule: Rule) -> bool:
    """Whether the value is on the controls' side of their extreme (nearest the null value).

    Parameters
    ----------
    value : float
    rng : MetricRange
    rule : Rule
    """
    return value >= rng.low if rng.median >= rule.null else value <= rng.high


def assess_image(modality: str, source: str, metrics: Mapping[str, float | None],
                 reference: QCReference | None) -> ImageQC:
    """Decide about one image from its metrics.

    Parameters
    ----------
    modality : str
        BIDS suffix the image was given as.
    source : str
        File name (for messages).
    metrics : mapping
        :func:`anomaly.qc.metrics.image_metrics` output.
    reference : QCReference or None
        The controls' distribution; None: nothing to compare with (decision "pass",
        ``compared`` False).

    Returns
    -------
    ImageQC
    """
    result = ImageQC(modality=modality, source=source, metrics=dict(metrics), compared=reference is not None)
    if reference is None or not reference.metrics.get(modality):
        result.compared = False
        return result
    for metric in RULES:
        finding = judge_metric(modality, metric, metrics.get(metric), reference)
        if finding is not None:
            result.findings.append(finding)
    levels = {f.level for f in result.findings}
    result.decision = "refuse" if "refuse" in levels else "warn" if levels else "pass"
    # A refusal first, so that refusal() and the one-line message name it.
    result.findings.sort(key=lambda f: f.level != "refuse")
    return result
