"""``anomaly qc``: a cohort's quality control against a normative model, before scoring.

Every subject's images are preprocessed as ``anomaly score`` would, their QC numbers
compared with the model's training controls (:mod:`anomaly.qc`), and the verdicts
written as ``QC_DIR/qc.tsv`` (one row per subject and image: metrics, for PET the
reference region's ratio to the region it is checked against, decision, reason) and ``QC_DIR/qc.html`` (the same rows, coloured by decision), in the spirit
of MRIQC's group report. A subject whose files cannot be read gets one row with the
decision ``refuse`` and the error as the reason.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from anomaly import __version__
from anomaly.cli.status import EXIT_OK
from anomaly.constants import PET
from anomaly.io import (
    AnomalyInputError,
    Subject,
    check_output_dir,
    find_subjects,
    write_tsv,
)
from anomaly.qc import METRICS

QC_TSV = "qc.tsv"
QC_HTML = "qc.html"


def qc_command(bids_dir: Path, *, model_dir: Path, out_dir: Path, participant_labels: Sequence[str] | None = None,
               group: str = "all", progress: bool = True) -> int:
    """Write the cohort's QC table and page; returns the exit status (0: the files were written).

    Parameters
    ----------
    bids_dir : path
        BIDS dataset with participants.tsv.
    model_dir : path
        Normative model folder (its training controls' QC distribution is the reference).
    out_dir : path
        Output folder for ``qc.tsv`` and ``qc.html``.
    participant_labels : sequence of str, optional
        Subjects to check.
    group : {"all", "patient", "control"}
        Which participants to check.
    progress : bool
        Show a progress bar.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from anomaly.normative import NormativeModel
    from anomaly.report.html import render_qc_page

    subjects = find_subjects(bids_dir, participant_labels=participant_labels,
                             group=None if group == "all" else group)
    model = NormativeModel.load(model_dir, device="cpu")
    out = check_output_dir(out_dir, inputs=[bids_dir, model_dir])
    rows = []
    for subject in tqdm(subjects, desc="qc", unit="subject", disable=not progress):
        rows += subject_rows(model, subject, root=bids_dir)
    table = pd.DataFrame(rows, columns=_columns())
    write_tsv(table, out / QC_TSV)
    counts = Counter(row["decision"] for row in rows)
    summary = {"subjects": len(subjects), "images": len(rows),
               **{f"images {d}": counts.get(d, 0) for d in ("pass", "warn", "refuse")},
               "model": str(model_dir), "toolkit version": __version__}
    if getattr(model, "qc_reference_", None) is None:
        summary["note"] = "the model records no controls' QC distribution: nothing was compared"
    render_qc_page(out / QC_HTML, rows, title="anomaly: cohort quality control", summary=summary)
    print(f"QC of {len(rows)} image(s) of {len(subjects)} subject(s): "
          + ", ".join(f"{counts.get(d, 0)} {d}" for d in ("pass", "warn", "refuse")) + f"; wrote {out / QC_TSV}")
    return EXIT_OK


def _columns() -> list[str]:
    return ["participant_id", "group", "modality", "source", *METRICS, "pet_reference_ratio", "decision", "reason"]


def subject_rows(model, subject: Subject, *, root: Path | None = None) -> list[dict]:
    """The QC rows of one subject (one per image; one row for a subject that cannot be read).

    Parameters
    ----------
    model : anomaly.normative.NormativeModel
    subject : anomaly.io.Subject
    root : path, optional
        Dataset folder: sources are shown relative to it.
    """
    base = {"participant_id": f"sub-{subject.label}", "group": subject.group}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # low coverage etc. show up as QC findings
            prep = model.preprocess(subject.images)
        verdict = model.quality_check(prep, age=subject.age, sex=subject.sex,
                                      where=f"sub-{subject.label} age/sex")
    except AnomalyInputError as exc:
        return [{**base, "modality": "n/a", "source": "n/a", "decision": "refuse", "reason": str(exc)}]
    rows = []
    # Subject-level warnings (age, PET reference) go on every row of the subject, so
    # that each row stands alone in a filtered table.
    subject_notes = [w for w in verdict.warnings if not any(w.endswith(f.message) for q in verdict.images.values()
                                                            for f in q.findings)]
    for modality, image in verdict.images.items():
        decision = image.decision if image.decision != "pass" or not subject_notes else "warn"
        reasons = [f.message for f in image.findings] + subject_notes
        if not image.compared:
            reasons.append("no controls' QC distribution in the model: nothing compared")
        rows.append({**base, "modality": modality, "source": _relative(image.source, root),
                     **{k: (None if v is None else round(float(v), 4)) for k, v in image.metrics.items()},
                     "pet_reference_ratio": _reference_ratio(verdict) if modality == PET else None,
                     "decision": decision, "reason": "; ".join(reasons)})
    return rows


def _reference_ratio(verdict) -> float | None:
    """The PET reference region's uptake over the region it is checked against (e.g. cerebellum/brainstem)."""
    from anomaly.qc.pet import REFERENCE_RATIO

    info = verdict.pet_reference or {}
    return info.get("ratios", {}).get(REFERENCE_RATIO.get(info.get("reference"), ""))


def _relative(path: str, root: Path | None) -> str:
    """``path`` relative to ``root`` when it lies inside it."""
    if root is not None:
        try:
            return str(Path(path).resolve().relative_to(Path(root).resolve()))
        except ValueError:
            pass
    return str(path)
