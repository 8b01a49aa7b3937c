"""Simulate a cohort, fit both normative models on its controls, compare lesion detection.

A normative model learns what healthy brains look like; a patient's deviation from it
is a voxelwise anomaly map. The toolkit has two models with one API:

* ``NormativeModel("zscore")``: the classical clinical approach (SPM single-subject
  analysis, 3D-SSP): each voxel's z score against the control mean and SD;
* ``NormativeModel("ae")``: a 3D U-Net denoising autoencoder; the anomaly is what it
  cannot reconstruct.

This script simulates controls and coma patients with known lesions, fits both models
on the controls, saves them, and measures how well each one's anomaly maps find the
simulated focal lesions: the voxel AUROC over the patients (1 = perfect, 0.5 = chance).
As in ``benchmarks/detection.py``, voxels changed only by diffuse hypometabolism (in
the lesion mask but not in the focal mask) are neither lesion nor normal and are left
out.

Run from the repository root::

    python examples/01_simulate_and_fit.py --quick          # 4 mm, 5 epochs: about 20 s
    python examples/01_simulate_and_fit.py --out my_run     # 3 mm, 20 epochs: minutes (GPU if any)

With ``--quick`` the autoencoder is tiny and barely trained, so the z-score model
usually wins; train it longer (and on more controls) to see what it can do.
"""

from __future__ import annotations

import time

import numpy as np
from _common import output_dir, parser
from sklearn.metrics import roc_auc_score

from anomaly.io import find_subjects
from anomaly.normative import NormativeModel
from anomaly.preprocess import resample_to_grid
from anomaly.simulate import simulate_cohort


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = parser(__doc__)
    p.add_argument("--device", default="auto", help="autoencoder device: auto, cpu or cuda")
    args = p.parse_args(argv)
    out = output_dir(args.out, "01")
    if args.quick:
        n_healthy, n_patients, resolution = 10, 5, 4.0
        ae_settings = dict(epochs=5, channels=(8, 16, 32, 64), val_fraction=0.3)
    else:
        n_healthy, n_patients, resolution = 40, 15, 3.0
        ae_settings = dict(epochs=20)

    # 1. Simulate a BIDS dataset: controls (sub-hc*) and patients (sub-pt*), with the
    #    ground truth (lesion and focal-lesion masks) in derivatives/simulation/.
    bids = simulate_cohort(out / "bids", n_healthy=n_healthy, n_patients=n_patients, seed=args.seed,
                           resolution=resolution, missing_fraction=0.0)
    controls = find_subjects(bids, group="control")
    patients = find_subjects(bids, group="patient")
    print(f"simulated {len(controls)} controls and {len(patients)} patients at {resolution:g} mm in {bids}")

    # 2. Fit both models on the controls. They share a work folder: the first fit keeps
    #    its cache of preprocessed controls (resampled, intensity-normalised) and the
    #    second one reuses it instead of preprocessing again.
    work = out / "work"
    models, fit_seconds = {}, {}
    for method, settings in (("zscore", {}), ("ae", ae_settings)):
        t0 = time.perf_counter()
        model = NormativeModel(method, resolution=resolution, seed=args.seed, device=args.device, **settings)
        model.fit(controls, workdir=work, keep_cache=method == "zscore")
        fit_seconds[method] = time.perf_counter() - t0
        # 3. Save: a folder with metadata.json and safetensors weights, which
        #    NormativeModel.load() (or `anomaly score --model`) reads back.
        model.save(out / f"model-{method}")
        models[method] = model

    # 4. Score every patient with both models and collect, per model, the anomaly of
    #    the evaluated voxels and whether each is in a focal lesion.
    grid, brain = models["zscore"].grid_, models["zscore"].mask_
    truth = bids / "derivatives" / "simulation"
    labels, values = [], {method: [] for method in models}
    for s in patients:
        masks = {kind: resample_to_grid(truth / f"sub-{s.label}" / f"sub-{s.label}_desc-{kind}_mask.nii.gz",
                                        grid, interpolation="nearest") > 0.5
                 for kind in ("focal", "lesion")}
        evaluated = brain & ~(masks["lesion"] & ~masks["focal"])
        labels.append(masks["focal"][evaluated])
        prep = models["zscore"].preprocess(s.images)  # same grid and modalities: preprocess once
        for method, model in models.items():
            score = model.transform(prep, age=s.age, sex=s.sex)
            values[method].append(score.anomaly[evaluated])

    # 5. Compare: voxel AUROC of the anomaly maps for the focal lesions.
    y = np.concatenate(labels)
    auroc = {method: float(roc_auc_score(y, np.concatenate(v))) for method, v in values.items()}
    print(f"\nFocal-lesion detection over {len(patients)} patients "
          f"({int(y.sum())} lesion voxels of {y.size} evaluated)")
    print(f"{'model':<8} {'voxel AUROC':>11} {'fit (s)':>8}")
    for method in models:
        print(f"{method:<8} {auroc[method]:>11.3f} {fit_seconds[method]:>8.1f}")
    print(f"\nmodels saved in {out / 'model-zscore'} and {out / 'model-ae'}")
    print(f"outputs in {out}")
    return auroc


if __name__ == "__main__":
    main()
