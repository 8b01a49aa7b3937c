"""Check every subject's inputs before scoring starts, from their headers only.

``anomaly score`` must say what is wrong with its inputs before it does any work or
prints anything else: a batch names all its bad subjects together at the start (one
line each), and a single bad input gives exactly one line. Reading every image in full
twice would cost as much as the scoring's own reading, so the check stops at what the
header tells: the file opens as an image, its shape is a 3D volume of a plausible size
with a real data type, its affine is usable, its field of view covers the MNI152 brain
and the file is long enough for the data it announces. These are the first steps of
:func:`anomaly.io.load_image`, run through its own functions (no second copy of the
rules); the voxel values are checked when the image is read for scoring, and a subject
that fails there is reported on its own line then.

A subject must also give at least one modality of the model. Images of modalities the
model does not use are dropped from the jobs and named once for the whole batch
(rather than once per subject while scoring).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from anomaly.constants import PET
from anomaly.io import AnomalyInputError
from anomaly.io.images import check_image_header


class _Job(Protocol):
    label: str
    images: dict


@dataclass
class BadSubject:
    """A subject refused before scoring: its label and the one-line reason."""

    label: str
    message: str

    def line(self) -> str:
        """The stderr line (without the command prefix): ``sub-<label>: <message>``."""
        return f"sub-{self.label}: {self.message}"


def check_jobs(jobs: Sequence[_Job], model_modalities: Sequence[str]) -> tuple[list, list[BadSubject]]:
    """Split jobs into those that can be scored and the bad subjects, before any work.

    Parameters
    ----------
    jobs : sequence of ScoreJob
        Subjects to score (``label`` and ``images``: modality -> path); images of
        modalities the model does not use are removed from them.
    model_modalities : sequence of str
        The model's modalities, spelled as the jobs spell them.

    Returns
    -------
    good : list of ScoreJob
        In their original order.
    bad : list of BadSubject
        One per refused subject, naming the first bad file.
    """
    good, bad = [], []
    for job in jobs:
        try:
            _check_job(job, model_modalities)
        except AnomalyInputError as exc:
            bad.append(BadSubject(job.label, str(exc)))
        else:
            good.append(job)
    return good, bad


def _check_job(job: _Job, model_modalities: Sequence[str]) -> None:
    known = {m: p for m, p in job.images.items() if m in model_modalities and p is not None}
    if not known:
        given = ", ".join(f"{m} ({p})" for m, p in job.images.items()) or "none"
        raise AnomalyInputError(f"none of the model's modalities ({', '.join(model_modalities)}) "
                                f"was given (got: {given})")
    for modality, path in known.items():
        if isinstance(path, (str, Path)):
            check_image_header(path, average_frames=modality == PET)


def drop_unused_modalities(jobs: Sequence[_Job], model_modalities: Sequence[str]) -> Counter:
    """Remove the images of modalities the model does not use; count them by modality.

    Only subjects that keep at least one modality of the model lose theirs (the others
    are refused by :func:`check_jobs`, naming what they gave).

    Parameters
    ----------
    jobs : sequence of ScoreJob
        Their ``images`` are replaced.
    model_modalities : sequence of str
        The model's modalities.
    """
    dropped: Counter = Counter()
    for job in jobs:
        unused = [m for m in job.images if m not in model_modalities]
        if unused and len(unused) < len(job.images):
            dropped.update(unused)
            job.images = {m: p for m, p in job.images.items() if m in model_modalities}
    return dropped


def unused_modalities_note(dropped: Mapping[str, int], model_modalities: Sequence[str]) -> str | None:
    """One sentence naming the modalities ignored in a batch, or None.

    Parameters
    ----------
    dropped : mapping of str to int
        Subjects per ignored modality (:func:`drop_unused_modalities`).
    model_modalities : sequence of str
        The model's modalities.
    """
    if not dropped:
        return None
    listed = ", ".join(f"{m} ({n} subject(s))" for m, n in sorted(dropped.items()))
    return f"ignoring images of modalities the model does not use ({', '.join(model_modalities)}): {listed}"


__all__ = ["BadSubject", "check_image_header", "check_jobs", "drop_unused_modalities", "unused_modalities_note"]
