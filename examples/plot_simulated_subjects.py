"""Look at simulated subjects: a control and a patient with thalamic and brainstem lesions.

Run from the repository root::

    python examples/plot_simulated_subjects.py [--resolution 2] [--out docs/simulated_subjects.png]

The figure has one row per subject and, for T1w, FLAIR and FDG PET, an axial and a
coronal slice through the patient's thalamic lesion (the same slices for both
subjects). PET is shown as SUVR (cerebellum = 1); the patient's ground-truth focal mask
is outlined in cyan on its PET.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from anomaly.atlas import Atlas  # noqa: E402
from anomaly.simulate import simulate_subject  # noqa: E402

MODALITIES = ("T1w", "FLAIR", "pet")
TITLES = {"T1w": "T1w", "FLAIR": "FLAIR", "pet": "FDG PET"}


def _slices(volume: np.ndarray, ijk: np.ndarray) -> dict[str, np.ndarray]:
    """Axial and coronal slices through voxel ``ijk``, oriented for display (RAS)."""
    _, j, k = (int(v) for v in ijk)
    return {"axial": volume[:, :, k].T, "coronal": volume[:, j, :].T}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=2, help="voxel size in mm (default 2)")
    parser.add_argument("--seed", type=int, default=3, help="random seed (default 3)")
    here = Path(__file__).resolve().parent.parent
    parser.add_argument("--out", type=Path, default=here / "docs" / "simulated_subjects.png")
    args = parser.parse_args(argv)

    control = simulate_subject(
        args.seed, group="control", resolution=args.resolution, age=45, sex="F"
    )
    patient = simulate_subject(
        args.seed + 1,
        group="patient",
        resolution=args.resolution,
        age=45,
        sex="M",
        global_metabolism=0.5,
        damage={"thalamus": 0.95, "brainstem": 0.8},
        distractors=[],
    )
    lesion = next(les for les in patient.lesions if les["family"] == "thalamus")
    print("patient lesions:", ", ".join(les["region"] for les in patient.lesions))
    ijk = np.rint(np.linalg.solve(patient.affine, [*lesion["centre_mm"], 1.0])[:3]).astype(int)

    # PET is shown as SUVR (cerebellum reference), as clinicians read FDG; each MRI
    # is windowed on its own brain intensities (scanner gains differ).
    grid = nib.Nifti1Image(np.zeros(patient.images["pet"].shape, np.int16), patient.affine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tiny vessel labels lost: irrelevant
        cerebellum = Atlas.load("neuromorphometrics").resample_to(grid).region_mask("Cerebell")
    views = ("axial", "coronal")
    fig, axes = plt.subplots(2, 2 * len(MODALITIES), figsize=(16, 6.2), facecolor="black")
    for row, (name, subject) in enumerate((("control", control), ("patient", patient))):
        for m, modality in enumerate(MODALITIES):
            volume = subject.images[modality]
            if modality == "pet":
                volume = volume / volume[cerebellum].mean()
                vmin, vmax, cmap = 0.0, 1.6, "hot"
            else:
                brain = volume[volume > 0.3 * np.percentile(volume, 99.5)]
                # T1w: white matter near white; FLAIR: parenchyma mid-grey, lesions white.
                top = np.percentile(brain, 99.5) if modality == "T1w" else 1.6 * np.median(brain)
                vmin, vmax, cmap = 0.0, top, "gray"
            for v, view in enumerate(views):
                ax = axes[row, 2 * m + v]
                ax.imshow(_slices(volume, ijk)[view], origin="lower", cmap=cmap,
                          vmin=vmin, vmax=vmax, interpolation="nearest")
                if name == "patient" and modality == "pet":
                    focal = _slices(patient.focal_mask.astype(float), ijk)[view]
                    ax.contour(focal, levels=[0.5], colors="cyan", linewidths=0.6, origin="lower")
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(f"{TITLES[modality]} {view}", color="white", fontsize=10)
        label = (
            f"control\n{control.sex}, {control.age} y"
            if name == "control"
            else (
                f"patient\n{patient.sex}, {patient.age} y, g={patient.global_metabolism:.2f}\n"
                f"CRS-R true {patient.crs_true:.1f}"
            )
        )
        axes[row, 0].set_ylabel(label, color="white", fontsize=10)
    fig.suptitle(
        "Simulated subjects (anomaly.simulate): slices through the patient's thalamic lesion; "
        "cyan = ground-truth focal mask",
        color="white", fontsize=11,
    )
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110, facecolor="black")
    plt.close(fig)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
