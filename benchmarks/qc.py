"""Quality-control margins: how far the refusal thresholds sit from real disease and from wrong images.

Simulates a cohort (or reads ``--bids``), preprocesses every subject on the model grid,
screens the controls leave-one-out (:func:`anomaly.qc.screen_controls`, which also gives
the controls' distribution), assesses every patient against it, and makes wrong images
from the first patient: PET given as T1w, T1w given as PET or FLAIR, FLAIR given as T1w,
an inverted T1w, and T1w and PET moved out of MNI space (rotated 15 degrees about x,
shifted 20 mm, scaled 0.94). For each deciding metric (:data:`anomaly.qc.RULES`) it
prints the lowest *retained fraction* among controls and patients, the refusal threshold
and the margin; then the decision of every wrong image; then the lesioned-control
check (a 30 mm lesion added to one control's preprocessed images: its largest abnormal
cluster against the healthy controls').

No timing targets: the result is the margin table. Usage::

    python -m benchmarks.qc                                  # 10 controls, 40 patients, 4 mm, seed 11
    python -m benchmarks.qc --bids /path/to/sim --json qc.json
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from benchmarks._common import load_average, machine, write_json


def _moved(path: Path, out: Path) -> Path:
    """The image rotated 15 degrees about x, shifted 20 mm and scaled 0.94, still labelled MNI."""
    img = nib.load(path)
    theta = np.deg2rad(15.0)
    pose = np.eye(4)
    pose[:3, :3] = 0.94 * np.array([[1, 0, 0], [0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)]])
    pose[:3, 3] = [20.0, 0.0, 0.0]
    matrix = np.linalg.inv(img.affine) @ np.linalg.inv(pose) @ img.affine
    data = ndimage.affine_transform(img.get_fdata(dtype=np.float32), matrix[:3, :3], offset=matrix[:3, 3], order=1)
    nib.Nifti1Image(data, img.affine, img.header).to_filename(out)
    return out


def _inverted(path: Path, out: Path) -> Path:
    img = nib.load(path)
    data = img.get_fdata(dtype=np.float32)
    nib.Nifti1Image(np.where(data > 0, data.max() - data, 0), img.affine, img.header).to_filename(out)
    return out


def _wrong_images(images: dict, tmp: Path) -> dict[str, dict]:
    return {"PET as T1w": {"T1w": images["pet"]}, "FLAIR as T1w": {"T1w": images["FLAIR"]},
            "T1w as PET": {"pet": images["T1w"]}, "T1w as FLAIR": {"FLAIR": images["T1w"]},
            "PET as FLAIR": {"FLAIR": images["pet"]},
            "inverted T1w": {"T1w": _inverted(images["T1w"], tmp / "inv_T1w.nii.gz")},
            "moved T1w": {"T1w": _moved(images["T1w"], tmp / "moved_T1w.nii.gz")},
            "moved PET": {"pet": _moved(images["pet"], tmp / "moved_pet.nii.gz")}}


def _lesioned(data: np.ndarray, grid, modalities) -> np.ndarray:
    """A 30 mm lesion in the left hemisphere: PET x 0.5, T1w - 2 and other MRI + 2 (robust SD units).

    MRI channels are normalised (robust z about the brain median): a lesion is an offset there.
    """
    ijk = np.indices(grid.shape).reshape(3, -1)
    world = (grid.affine @ np.vstack([ijk, np.ones(ijk.shape[1])]))[:3].T.reshape(*grid.shape, 3)
    sphere = np.linalg.norm(world - np.array([-35.0, -20.0, 20.0]), axis=-1) < 30
    out = data.copy()
    for c, modality in enumerate(modalities):
        voxels = sphere & (out[c] != 0)
        if modality == "pet":
            out[c][voxels] *= 0.5
        else:
            out[c][voxels] += -2.0 if modality == "T1w" else 2.0
    return out


def run(bids: Path, resolution: float, tmp: Path) -> dict:
    from anomaly.io import find_subjects
    from anomaly.normative import NormativeModel
    from anomaly.qc import RULES, assess_subject, screen_controls
    from anomaly.qc.controls import _median_cluster
    from anomaly.qc.decide import retained_fraction, rule_for

    subjects = find_subjects(bids)
    modalities = [m for m in ("T1w", "FLAIR", "pet") if all(m in s.images for s in subjects)]
    model = NormativeModel("zscore", resolution=resolution, modalities=modalities)
    preps = {s.label: model.preprocess(s.images) for s in subjects}
    controls = [s for s in subjects if s.group == "control"]
    patients = [s for s in subjects if s.group == "patient"]
    loaders = {s.label: (lambda p=preps[s.label]: (p.data, p.present)) for s in controls}
    grid = preps[controls[0].label].grid
    screen = screen_controls(loaders, modalities, grid, {s.label: s.age for s in controls})
    reference = screen.reference
    control_mean = np.mean([preps[s.label].data for s in controls], axis=0)
    lowest: dict[tuple[str, str, str], tuple[float, str]] = {}

    def note(group: str, label: str, modality: str, metric: str, value) -> None:
        rng, rule = reference.range(modality, metric), rule_for(modality, metric)
        fraction = None if value is None or rng is None else retained_fraction(value, rng, rule)
        key = (group, modality, metric)
        if fraction is not None and fraction < lowest.get(key, (np.inf, ""))[0]:
            lowest[key] = (float(fraction), label)

    for label, per_modality in screen.metrics.items():
        for modality, values in per_modality.items():
            for metric in RULES:
                note("control", label, modality, metric, values.get(metric))
    refused_patients = []
    for s in patients:
        verdict = assess_subject(preps[s.label], reference, control_mean, age=s.age, sex=s.sex)
        if verdict.decision == "refuse":
            refused_patients.append(s.label)
        for modality, image in verdict.images.items():
            for metric in RULES:
                note("patient", s.label, modality, metric, image.metrics.get(metric))
    wrong = {}
    for name, images in _wrong_images(patients[0].images, tmp).items():
        verdict = assess_subject(model.preprocess(images), reference, control_mean)
        image = next(iter(verdict.images.values()))
        wrong[name] = {"decision": image.decision, "check": image.findings[0].metric if image.findings else None,
                       "fractions": {k: (None if (f := retained_fraction(image.metrics[k], r, RULES[k])) is None
                                         else round(float(f), 3))
                                     for k in RULES if image.metrics.get(k) is not None
                                     and (r := reference.range(image.modality, k)) is not None}}
    first = controls[0].label
    lesioned = dict(loaders)
    lesioned[first] = lambda: (_lesioned(preps[first].data, grid, modalities), preps[first].present)
    screen_lesion = screen_controls(lesioned, modalities, grid)
    healthy = [c for label, v in screen.metrics.items() if (c := _median_cluster(v)) is not None]
    return {"controls": len(controls), "patients": len(patients), "resolution_mm": resolution,
            "control_outliers_healthy": sorted(screen.outliers), "patients_refused": refused_patients,
            "lowest_fraction": [{"group": g, "modality": m, "metric": k, "fraction": round(f, 3), "subject": who,
                                 "refuse_below": RULES[k].refuse_below, "warn_below": RULES[k].warn_below}
                                for (g, m, k), (f, who) in sorted(lowest.items())],
            "wrong_images": wrong,
            "lesioned_control": {"label": first, "flagged": first in screen_lesion.outliers,
                                 "cluster": round(_median_cluster(screen_lesion.metrics[first]), 4),
                                 "healthy_max_cluster": round(max(healthy), 4)}}


def print_result(result: dict) -> None:
    print(f"QC margins: {result['controls']} controls, {result['patients']} patients, "
          f"{result['resolution_mm']:g} mm; {machine()}")
    print(f"{'group':8} {'modality':8} {'metric':10} {'lowest':>7} {'refuse<':>7} {'margin':>7}  subject")
    for row in result["lowest_fraction"]:
        threshold = row["refuse_below"]
        margin = "" if threshold is None else f"{row['fraction'] - threshold:7.3f}"
        print(f"{row['group']:8} {row['modality']:8} {row['metric']:10} {row['fraction']:7.3f} "
              f"{'' if threshold is None else threshold:>7} {margin:>7}  {row['subject']}")
    print(f"healthy controls flagged: {result['control_outliers_healthy'] or 'none'}; "
          f"patients refused: {result['patients_refused'] or 'none'}")
    for name, info in result["wrong_images"].items():
        print(f"{name:14} {info['decision']:7} {info['check'] or '':11} {info['fractions']}")
    les = result["lesioned_control"]
    print(f"control with a 30 mm lesion: cluster {les['cluster']:.1%} (healthy at most "
          f"{les['healthy_max_cluster']:.1%}), flagged: {les['flagged']}")


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and print its tables; returns the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bids", type=Path, help="existing simulated cohort (default: simulate one)")
    parser.add_argument("--controls", type=int, default=10, help="controls to simulate (default 10)")
    parser.add_argument("--patients", type=int, default=40, help="patients to simulate (default 40)")
    parser.add_argument("--seed", type=int, default=11, help="simulator seed (default 11)")
    parser.add_argument("--resolution", type=float, default=4.0, help="voxel size in mm (default 4)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    print(f"load average at start: {load_average()}")
    with tempfile.TemporaryDirectory() as tmp:
        bids = args.bids
        if bids is None:
            from anomaly.simulate import simulate_cohort

            bids = simulate_cohort(Path(tmp) / "bids", n_healthy=args.controls, n_patients=args.patients,
                                   seed=args.seed, resolution=args.resolution, missing_fraction=0.0,
                                   progress=False)
        result = run(Path(bids), args.resolution, Path(tmp))
    print_result(result)
    if args.json:
        write_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
