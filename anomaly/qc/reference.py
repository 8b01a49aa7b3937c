"""The training controls' distribution of every QC number, kept in the model folder.

:class:`QCReference` is what ``fit-normative`` records (per modality and metric: median,
robust scale, range, count; the controls' age range; the PET reference-region ratios)
and what scoring compares a new image with. It travels as plain JSON inside the
model's ``metadata.json`` (key ``"qc"``), so a model folder still loads without
unpickling; models written before QC existed have no such key and load with
``None``: scoring then says that QC compared with nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Version of the JSON layout of :meth:`QCReference.to_dict`.
QC_FORMAT = 1


@dataclass(frozen=True)
class MetricRange:
    """Robust summary of one metric over the controls.

    Attributes
    ----------
    median : float
    scale : float
        1.4826 x median absolute deviation (the SD for a normal distribution).
    low, high : float
        Smallest and largest control value.
    n : int
        Number of controls.
    """

    median: float
    scale: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> MetricRange | None:
        """Summary of the finite values; None when there is none.

        Parameters
        ----------
        values : iterable of float
        """
        arr = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
        if arr.size == 0:
            return None
        median = float(np.median(arr))
        return cls(median=median, scale=1.4826 * float(np.median(np.abs(arr - median))),
                   low=float(arr.min()), high=float(arr.max()), n=int(arr.size))

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready copy."""
        return {"median": self.median, "scale": self.scale, "low": self.low, "high": self.high, "n": self.n}


@dataclass
class QCReference:
    """The training controls' QC distribution.

    Attributes
    ----------
    metrics : dict
        modality -> metric name -> :class:`MetricRange`.
    age_range : tuple of 2 float or None
        Youngest and oldest control with a known age.
    pet_ratios : dict
        Name of a PET reference-region ratio (see :mod:`anomaly.qc.pet`) -> its
        :class:`MetricRange` over the controls.
    controls : dict
        Control label -> modality -> metric -> value (the leave-one-out values the
        ranges summarise), for the record and the ``anomaly qc`` table.
    """

    metrics: dict[str, dict[str, MetricRange]] = field(default_factory=dict)
    age_range: tuple[float, float] | None = None
    pet_ratios: dict[str, MetricRange] = field(default_factory=dict)
    controls: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)

    @classmethod
    def from_controls(cls, controls: Mapping[str, Mapping[str, Mapping[str, float | None]]],
                      ages: Iterable[float | None] = (),
                      pet_ratios: Mapping[str, Iterable[float]] | None = None) -> QCReference:
        """Summarise per-control metrics.

        Parameters
        ----------
        controls : mapping
            Control label -> modality -> metric -> value (None: not computed).
        ages : iterable of float or None
            The controls' ages (None or NaN: unknown).
        pet_ratios : mapping of str to iterable of float, optional
            PET reference-region ratios of the controls.
        """
        by_modality: dict[str, dict[str, list[float]]] = {}
        for per_modality in controls.values():
            for modality, values in per_modality.items():
                for metric, value in values.items():
                    by_modality.setdefault(modality, {}).setdefault(metric, []).append(value)
        metrics = {m: {k: r for k, v in d.items() if (r := MetricRange.of(v)) is not None}
                   for m, d in by_modality.items()}
        known = [float(a) for a in ages if a is not None and np.isfinite(a)]
        ratios = {k: r for k, v in (pet_ratios or {}).items() if (r := MetricRange.of(v)) is not None}
        return cls(metrics=metrics, age_range=(min(known), max(known)) if known else None,
                   pet_ratios=ratios, controls={k: {m: dict(v) for m, v in d.items()}
                                                for k, d in controls.items()})

    def range(self, modality: str, metric: str) -> MetricRange | None:
        """The controls' range of one metric of one modality (None when not recorded).

        Parameters
        ----------
        modality, metric : str
        """
        return self.metrics.get(modality, {}).get(metric)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (stored under ``"qc"`` in the model's metadata.json)."""
        return {"format": QC_FORMAT,
                "metrics": {m: {k: r.to_dict() for k, r in d.items()} for m, d in self.metrics.items()},
                "age_range": list(self.age_range) if self.age_range else None,
                "pet_ratios": {k: r.to_dict() for k, r in self.pet_ratios.items()},
                "controls": self.controls}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> QCReference | None:
        """Rebuild from :meth:`to_dict` output; None for None (a model without QC).

        Parameters
        ----------
        data : mapping or None

        Raises
        ------
        ValueError
            For a layout this version does not read.
        """
        if data is None:
            return None
        if data.get("format") != QC_FORMAT:
            raise ValueError(f"QC reference format {data.get('format')!r} (expected {QC_FORMAT})")
        age = data.get("age_range")
        return cls(metrics={m: {k: MetricRange(**r) for k, r in d.items()} for m, d in data["metrics"].items()},
                   age_range=(float(age[0]), float(age[1])) if age else None,
                   pet_ratios={k: MetricRange(**r) for k, r in data.get("pet_ratios", {}).items()},
                   controls=data.get("controls", {}))
