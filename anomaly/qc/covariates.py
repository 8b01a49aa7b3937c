"""Covariates: refuse impossible ages and sexes, warn when the age model extrapolates."""

from __future__ import annotations

import math

from anomaly.io import AnomalyInputError
from anomaly.io.participants import AGE_LIMITS

__all__ = ["AGE_LIMITS", "SEXES", "age_warning", "check_covariates"]

#: Sexes the calibration models.
SEXES = ("M", "F")


def check_covariates(age: float | None, sex: str | None, *, where: str = "covariates") -> None:
    """Refuse an age outside 0-120 years or a sex other than M/F.

    Parameters
    ----------
    age : float or None
        Years; None or NaN: unknown (allowed).
    sex : str or None
        "M" or "F"; None or NaN: unknown (allowed).
    where : str, default="covariates"
        What to name in the message (a file and row, or an option).

    Raises
    ------
    AnomalyInputError
        One line naming ``where``, the value and the accepted range.
    """
    if age is not None and not (isinstance(age, float) and math.isnan(age)):
        try:
            value = float(age)
        except (TypeError, ValueError):
            raise AnomalyInputError(f"{where}: age {age!r} is not a number") from None
        if not (math.isfinite(value) and AGE_LIMITS[0] <= value <= AGE_LIMITS[1]):
            raise AnomalyInputError(
                f"{where}: age {age!r} is outside {AGE_LIMITS[0]:g}-{AGE_LIMITS[1]:g} years")
    if sex is not None and not (isinstance(sex, float) and math.isnan(sex)) and sex not in SEXES:
        raise AnomalyInputError(f"{where}: sex {sex!r} is not M or F")


def age_warning(age: float | None, age_range: tuple[float, float] | None, *,
                age_modelled: bool = True) -> str | None:
    """A warning when the age is outside the training controls' age range.

    Parameters
    ----------
    age : float or None
    age_range : tuple of 2 float or None
        Youngest and oldest control (None: unknown, no warning).
    age_modelled : bool, default=True
        Whether the normative model has an age term (too few calibration controls
        give a model without covariates: then no age model extrapolates, but the
        subject is compared with controls of other ages).

    Returns
    -------
    str or None
    """
    if age is None or age_range is None or (isinstance(age, float) and math.isnan(age)):
        return None
    low, high = age_range
    if low <= float(age) <= high:
        return None
    what = ("the age model extrapolates" if age_modelled else
            "the model has no age term (too few calibration controls), so this subject is compared with "
            "controls of other ages")
    return (f"age {float(age):g} is outside the training controls' age range ({low:g}-{high:g}): "
            f"{what} and the z maps are less reliable")
