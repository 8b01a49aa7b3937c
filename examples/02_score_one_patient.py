"""Score one patient in memory: global cortical PET level, most abnormal regions, figures.

What a clinician-scientist does in a notebook with one new patient:

1. load a normative model (``--model``, e.g. ``model-zscore`` from
   ``01_simulate_and_fit.py``), or fit a quick z-score model on simulated controls;
2. get the patient's images: your own NIfTI files (``--image``, modality from the BIDS
   suffix), or a simulated patient with a thalamic and a brainstem lesion, kept in
   memory as nibabel images (no file is written for it);
3. score it: ``model.transform(images)`` returns the z map of each modality and the
   combined anomaly map (>= 0, z units);
4. print the global cortical PET level (% of the normative mean: awareness needs
   roughly > 42%) and the 10 most abnormal atlas regions;
5. save a glass brain and orthogonal slices through the peak (anomaly.report.figures).

Run from the repository root::

    python examples/02_score_one_patient.py --quick
    python examples/02_score_one_patient.py --model my_run/model-ae \\
        --image sub-01_T1w.nii.gz sub-01_FLAIR.nii.gz sub-01_pet.nii.gz --age 54 --sex M
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from _common import fit_zscore, output_dir, parser, quiet_atlas_warnings

from anomaly.atlas import region_table
from anomaly.cli.scorer import Scorer
from anomaly.io import modality_from_path, write_tsv
from anomaly.normative import NormativeModel
from anomaly.report.figures import plot_anomaly_glass_brain, plot_peak_slices
from anomaly.report.subject import ANOMALY_FIGURE_THRESHOLD
from anomaly.simulate import simulate_cohort, simulate_subject


def main(argv: list[str] | None = None) -> pd.DataFrame:
    p = parser(__doc__)
    p.add_argument("--model", type=Path, help="normative model folder (default: fit a quick z-score model)")
    p.add_argument("--image", type=Path, nargs="+", help="the patient's NIfTI files (BIDS names: *_T1w, *_pet...)")
    p.add_argument("--age", type=float, help="patient's age (years), for the calibration")
    p.add_argument("--sex", choices=("M", "F"), help="patient's sex, for the calibration")
    args = p.parse_args(argv)
    out = output_dir(args.out, "02")
    quiet_atlas_warnings()

    # 1. A normative model: load a saved one, or fit the z-score model on simulated
    #    controls (seconds at 4 mm).
    if args.model is not None:
        model = NormativeModel.load(args.model)
    else:
        resolution = 4.0 if args.quick else 3.0
        bids = simulate_cohort(out / "bids", n_healthy=6 if args.quick else 20, n_patients=0,
                               seed=args.seed, resolution=resolution)
        model = fit_zscore(bids, resolution, args.seed)
        model.save(out / "model-zscore")
    print(f"model: {model.describe()}")

    # 2. The patient's images: modality (BIDS suffix) -> path or nibabel image.
    truth = None
    if args.image:
        images = {modality_from_path(path): path for path in args.image}
        if None in images:
            p.error("--image: name the files as BIDS does (sub-01_T1w.nii.gz, sub-01_pet.nii.gz...)")
        age, sex = args.age, args.sex
    else:
        truth = simulate_subject(args.seed + 1000, group="patient", resolution=model.resolution,
                                 damage={"thalamus": 0.9, "brainstem": 0.8}, global_metabolism=0.45)
        images = {m: nib.Nifti1Image(a, truth.affine) for m, a in truth.images.items()}
        age, sex = truth.age, truth.sex

    # 3. Score: voxel maps on the model grid (score.z: one signed map per modality).
    score = model.transform(images, age=age, sex=sex)
    for modality, qc in score.qc.items():  # field of view: the maps mean little where an image has no data
        if isinstance(qc, dict) and qc.get("coverage", 1.0) < 0.98:
            print(f"warning: {modality} covers {100 * qc['coverage']:.0f}% of the brain")

    # 4. Global cortical PET level and region table. The Scorer holds the atlas on the
    #    model grid and the cortical grey-matter mask; region_table() has the columns
    #    of the *_regions.tsv files that `anomaly score` writes.
    with Scorer(model) as scorer:
        level = scorer.global_pet(score)
        table = region_table(score, scorer.atlases[0],
                             level["median_cortical_pet_z"] if level else None, mask=model.mask_,
                             global_percent=level["global_cortical_pet_percent"] if level else None)
    if level:
        print(f"\nglobal cortical PET level: {level['global_cortical_pet_percent']:.1f}% of the normative mean"
              f" (median cortical PET z {level['median_cortical_pet_z']:+.2f})")
    else:
        print("\nglobal cortical PET level: no PET image")
    if truth is not None:
        print(f"simulated truth: global metabolism {100 * truth.global_metabolism:.0f}%, lesions in "
              + ", ".join(sorted({les["region"] for les in truth.lesions})))
    columns = [c for c in ("name", "n_voxels", "anomaly_mean", "anomaly_p95", "pet_z_mean", "pet_focal_z_mean")
               if c in table.columns]
    top = table.sort_values("anomaly_mean", ascending=False).head(10)[columns]
    print("\n10 most abnormal regions (anomaly in z units; focal z = PET z minus the median cortical z):")
    print(top.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    write_tsv(table, out / "regions.tsv")  # the whole table; "n/a" for missing values

    # 5. Figures: the combined anomaly map as a glass brain, and slices through its
    #    peak over the patient's own T1w (resampled to the model grid).
    anomaly = score.to_image(score.anomaly)
    plot_anomaly_glass_brain(anomaly, out / "anomaly_glassbrain.png", threshold=ANOMALY_FIGURE_THRESHOLD,
                             title="combined anomaly (z units)")
    t1 = score.modalities.index("T1w") if "T1w" in score.modalities else None
    background = score.to_image(score.data[t1]) if t1 is not None and score.present[t1] else None
    plot_peak_slices(anomaly, background, out / "anomaly_slices.png", threshold=ANOMALY_FIGURE_THRESHOLD,
                     title="most abnormal location")
    peak = np.unravel_index(int(np.argmax(score.anomaly)), score.anomaly.shape)
    print(f"\npeak anomaly {score.anomaly[peak]:.2f} at MNI "
          f"{tuple(round(float(v)) for v in (model.grid_.affine @ [*peak, 1])[:3])} mm")
    print(f"figures: {out / 'anomaly_glassbrain.png'}, {out / 'anomaly_slices.png'}")
    print(f"outputs in {out}")
    return top


if __name__ == "__main__":
    main()
