"""Voxel-level detection benchmark: autoencoder, z-score, hybrid and the classical reference.

Simulates cohorts with the simulator's **realistic** healthy variation
(:mod:`anomaly.simulate.variation`), fits one normative model per training cohort with
``--method auto`` (it holds the autoencoder and the voxelwise calibration, so the
``ae``, ``zscore`` and ``hybrid`` maps all come from it; ``auto`` is the one its
self-check picked and ``default`` the method that ``fit-normative`` uses by default)
and scores the patients of each setting:

``in-domain``
    training controls and test subjects from the same (realistic) population;
``held-out-seed``, ``held-out-seed-2``
    the same with the simulator seeds ``HELD_OUT_SEED`` and ``HELD_OUT_SEED_2``
    (:mod:`benchmarks._targets`), never looked at while choosing methods;
``site-shift`` (``-recal``)
    controls on scanner site "a", patients (and a few local controls) on site "b";
    ``-recal``: after :func:`anomaly.normative.recalibrate.recalibrate` on the local
    controls;
``held-out-shift`` (``-recal``)
    the same with site ``HELD_OUT_SITE`` ("c"), never looked at while choosing;
``default-sim``
    the original simulator (smooth 2 mm warps: what a voxelwise model fits best).

Voxels are scored as EVALUATION.md says (:func:`anomaly.simulate.truth.read_truth`): over
each patient's own brain mask (the template's mask where a cohort predates it), focal
voxels positive, voxels changed only through the global level left out.

Per setting and method: focal AUPRC (pooled voxels and the per-patient median), focal
AUROC, best Dice, all-lesion AUPRC, and the ratio of the focal AUPRC to the classical
reference of EVALUATION.md (:mod:`benchmarks._classical`), computed in the same run on
the same grid; ``classical+rim`` is that reference extended over the model's rim outside
the brain mask as the toolkit's maps are (:func:`anomaly.normative.maps.extend_into_rim`),
to show how much of a ratio the rim alone explains. Ablation tables give the focal
AUPRC of every modality-combination rule (mean, Stouffer, max) and of post-processed
anomaly maps (median filter, eroded mask, no rim: :data:`POSTPROCESS`).

Usage::

    python -m benchmarks.detection --quick                       # 4 mm, small cohorts
    python -m benchmarks.detection --resolution 3 --json det.json  # the README table
    python -m benchmarks.detection --quick --params '{"channels": [32, 64, 128, 256]}'  # wider network
    python -m benchmarks.detection --quick --modalities T1w pet   # the independent cohort's modalities
    python -m benchmarks.detection --quick --modalities T1w pet --missing-pet 0.15  # ... and its missing PET
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
)

from anomaly.constants import COMBINE_RULES, DEFAULT_COMBINE_RULE
from anomaly.simulate import ALL_MODALITIES
from anomaly.simulate.truth import read_truth
from benchmarks._common import (
    fit_in_child,
    machine,
    nan_for_none,
    parse_model_params,
    save_figure,
    write_json,
)
from benchmarks._targets import (
    HELD_OUT_SEED,
    HELD_OUT_SEED_2,
    HELD_OUT_SITE,
    detection_targets,
)

#: Every setting: training cohort, test cohort, recalibration on the test cohort's controls.
SETTINGS = {
    "in-domain": ("train", "test", False),
    "held-out-seed": ("train-heldout", "test-heldout", False),
    "held-out-seed-2": ("train-heldout2", "test-heldout2", False),
    "site-shift": ("train-a", "test-b", False),
    "site-shift-recal": ("train-a", "test-b", True),
    "held-out-shift": ("train-a", "test-heldout-site", False),
    "held-out-shift-recal": ("train-a", "test-heldout-site", True),
    "default-sim": ("train-default", "test-default", False),
}
#: Methods in the tables (``default``: fit-normative's default method; ``auto``: the
#: method the model's self-check picked).
METHODS = ("classical", "classical+rim", "zscore", "ae", "hybrid", "hybrid-max", "auto", "default")
#: Modality-combination rules of the ablation table (the toolkit's, in its order).
RULES = COMBINE_RULES
#: Post-processing variants of the anomaly map (:func:`anomaly.normative.maps.postprocess_anomaly`),
#: applied to the combined map instead of the model's own post-processing ("raw": none;
#: "no-rim", None: the model's own without its rim) and measured on these methods; a
#: variant's metrics are under ``"<method>+<variant>"``. The plain method columns are
#: what the toolkit writes: the model's own post-processing.
POSTPROCESS = {"raw": {}, "median3": {"median_size": 3}, "median5": {"median_size": 5},
               "erode1": {"erode_voxels": 1}, "median3+erode1": {"median_size": 3, "erode_voxels": 1},
               "no-rim": None}
POSTPROCESSED_METHODS = ("zscore", "ae", "hybrid")
#: NormativeModel keywords the benchmark sets from its own options (not via ``--params``;
#: ``seed`` may be given there: it then changes the networks' seed, not the simulator's).
RESERVED_PARAMS = ("method", "resolution", "epochs", "cross_fit")


def best_dice(labels: np.ndarray, scores: np.ndarray) -> float:
    """Best Dice over all thresholds (from the precision-recall curve)."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    return _best_dice(precision, recall)


def _best_dice(precision: np.ndarray, recall: np.ndarray) -> float:
    dice = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(dice.max())


def subsample_curve(precision: np.ndarray, recall: np.ndarray, thresholds: np.ndarray,
                    n_points: int = 400) -> dict:
    """About ``2 n_points`` points of a precision-recall curve, enough to plot it."""
    n = len(recall)
    idx = np.linspace(0, n - 1, min(n, n_points)).round().astype(int)
    levels = np.linspace(0.0, 1.0, n_points)
    at_level = n - 1 - np.searchsorted(recall[::-1], levels, side="left")
    idx = np.unique(np.clip(np.r_[0, idx, at_level, n - 1], 0, n - 1))
    thr = np.r_[thresholds, np.nan]
    return {"precision": precision[idx].round(5).tolist(), "recall": recall[idx].round(5).tolist(),
            "threshold": [None if not np.isfinite(t) else round(float(t), 5) for t in thr[idx]]}


def cohort_specs(seed: int, healthy: int, patients: int, test_controls: int) -> dict:
    """Cohort key -> (variation, site, seed, controls, patients)."""
    return {
        "train": ("realistic", None, seed, healthy, 0),
        "test": ("realistic", None, seed + 1, test_controls, patients),
        "train-heldout": ("realistic", None, HELD_OUT_SEED, healthy, 0),
        "test-heldout": ("realistic", None, HELD_OUT_SEED + 1, test_controls, patients),
        "train-heldout2": ("realistic", None, HELD_OUT_SEED_2, healthy, 0),
        "test-heldout2": ("realistic", None, HELD_OUT_SEED_2 + 1, test_controls, patients),
        "train-a": ("realistic", "a", seed, healthy, 0),
        "test-b": ("realistic", "b", seed + 1, test_controls, patients),
        "test-heldout-site": ("realistic", HELD_OUT_SITE, seed + 1, test_controls, patients),
        "train-default": ("default", None, seed, healthy, 0),
        "test-default": ("default", None, seed + 1, test_controls, patients),
    }


def cohort_folder(work: Path, key: str, modalities: tuple[str, ...] | None, missing_pet: float = 0.0) -> Path:
    """Folder of a cohort; a modality subset gets its own (``train+T1w+pet``), and so does a
    patient cohort with patients missing PET (``test+T1w+pet+nopet15``), so that a reused
    ``--out-dir`` never mixes cohorts (training cohorts, which have no patient, are shared)."""
    parts = [key, *(modalities or ())]
    if missing_pet > 0:
        parts.append(f"nopet{round(100 * missing_pet)}")
    return work / "+".join(parts)


def _simulate(work: Path, key: str, spec: tuple, resolution: float,
              modalities: tuple[str, ...] | None = None, missing_pet: float = 0.0) -> Path:
    from anomaly.simulate import MODALITIES, simulate_cohort, simulation_config

    variation, site, seed, n_controls, n_patients = spec
    missing_pet = missing_pet if n_patients else 0.0
    out = cohort_folder(work, key, modalities, missing_pet)
    if not out.exists():
        simulate_cohort(out, n_healthy=n_controls, n_patients=n_patients, seed=seed, resolution=resolution,
                        missing_fraction=missing_pet, missing_modalities=("pet",) if missing_pet else None,
                        n_jobs=2, progress=False, modalities=modalities or MODALITIES,
                        config=simulation_config(variation, site=site))
    return out


def default_method() -> str:
    """The method ``fit-normative`` and ``NormativeModel`` use by default."""
    from anomaly.normative import NormativeModel

    return NormativeModel().method


def subject_maps(model, classical, subject, default: str) -> dict[tuple[str, str], np.ndarray]:
    """(method, rule) -> anomaly map of one subject (the classical references: one map for every rule)."""
    from anomaly.normative.calibration import standardise
    from anomaly.normative.hybrid import hybrid_z
    from anomaly.normative.maps import (
        combine_anomaly,
        extend_into_rim,
        postprocess_anomaly,
    )

    prep = model.preprocess(subject.images)
    std = standardise(prep.data, prep.present, model.channel_mean_, model.channel_std_, model.mask_)
    z = model.component_z(std, prep.present, subject.age, subject.sex)
    if "ae" in z:
        z["hybrid-max"] = hybrid_z(z["ae"], z["zscore"], model.modalities_, rule="max")
    z["auto"] = z[model.method_]
    z["default"] = z[model.method_ if default == "auto" else default]
    reference = classical.anomaly(subject.images)
    rimmed = extend_into_rim(reference, model.mask_, model.map_rim_width())
    maps = {(method, rule): amap for rule in RULES
            for method, amap in (("classical", reference), ("classical+rim", rimmed))}
    own_without_rim = {**model.postprocess_settings(), "rim_voxels": 0.0}
    for method, zmap in z.items():
        zmap[~prep.present] = np.nan
        for rule in RULES:
            raw = combine_anomaly(zmap, prep.present, model.modalities_, model.mask_, rule=rule)
            maps[(method, rule)] = model.postprocess(raw)
            if method in POSTPROCESSED_METHODS:
                for name, kwargs in POSTPROCESS.items():
                    maps[(f"{method}+{name}", rule)] = postprocess_anomaly(raw, model.mask_, **(
                        own_without_rim if kwargs is None else kwargs))
    return maps


def evaluate(model, classical, patients, truth_dir: Path, default: str) -> dict:
    """Metrics of every (method, rule) over the patients' voxels (see the module docstring)."""
    pooled: dict = {}
    per_subject: dict = {}
    focal_y, all_y = [], []
    for s in patients:
        truth = read_truth(truth_dir, s.label, model.grid_, model.mask_)
        focal, evaluated = truth.focal, truth.focal_evaluated
        focal_y.append(focal[evaluated])
        all_y.append(truth.changed[truth.brain])
        for key, amap in subject_maps(model, classical, s, default).items():
            amap = np.nan_to_num(amap)  # no score is the lowest score
            p = pooled.setdefault(key, ([], []))
            p[0].append(amap[evaluated])
            p[1].append(amap[truth.brain])
            if focal[evaluated].any():
                per_subject.setdefault(key, []).append(average_precision_score(focal[evaluated], amap[evaluated]))
    fy, ay = np.concatenate(focal_y), np.concatenate(all_y)
    out, curves = {}, {}
    for (method, rule), (fs, als) in pooled.items():
        fs, als = np.concatenate(fs), np.concatenate(als)
        precision, recall, thresholds = precision_recall_curve(fy, fs)
        out.setdefault(method, {})[rule] = {
            "focal_auprc": average_precision_score(fy, fs), "focal_auroc": roc_auc_score(fy, fs),
            "focal_auprc_median": float(np.median(per_subject.get((method, rule), [np.nan]))),
            "focal_dice": _best_dice(precision, recall), "all_auprc": average_precision_score(ay, als),
            "focal_prevalence": float(fy.mean())}
        if rule == "stouffer" or method == "classical":
            curves.setdefault(method, subsample_curve(precision, recall, thresholds))
    return {"metrics": out, "curves": curves}


def run(*, healthy: int = 60, patients: int = 20, test_controls: int = 8, resolution: float = 3.0,
        epochs: int = 20, seed: int = 0, settings: tuple[str, ...] = tuple(SETTINGS),
        out_dir: Path | None = None, rule: str | None = None, cross_fit: int | None = None,
        params: dict | None = None, modalities: tuple[str, ...] | None = None,
        missing_pet: float = 0.0) -> dict:
    """Simulate, fit, evaluate every setting; return the results as a dict.

    ``params``: extra ``NormativeModel`` keyword arguments of the fits (``--params``).
    ``modalities``: the modalities the cohorts are simulated with (default: the
    simulator's, T1w, FLAIR and PET; ``("T1w", "pet")`` is what the independent
    evaluation cohort has). ``missing_pet``: the fraction of each test cohort's patients
    simulated without PET (EVALUATION.md: about 15 %; default 0); controls keep theirs.
    """
    args = {"healthy": healthy, "patients": patients, "test_controls": test_controls, "resolution": resolution,
            "epochs": epochs, "seed": seed, "settings": list(settings), "cross_fit": cross_fit,
            "modalities": None if modalities is None else list(modalities), "missing_pet": missing_pet,
            "params": dict(params or {}), "out_dir": None if out_dir is None else str(out_dir)}
    work = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="anomaly-detection-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run(work, args, rule)
    finally:
        if out_dir is None:
            shutil.rmtree(work, ignore_errors=True)


def _fit(work: Path, key: str, bids: Path, args: dict) -> tuple:
    from anomaly.normative import NormativeModel

    out = work / f"model-{bids.name}"
    fit_s = peak = float("nan")
    if not (out / "metadata.json").exists():
        # Realistic healthy variation (PET 4-9 mm, bias, atrophy) trips the control QC's
        # outlier screen: the benchmark drops (and records) such controls instead of stopping.
        fit_s, peak = fit_in_child("auto", bids, out, {"resolution": args["resolution"], "seed": args["seed"],
                                                       "device": "cpu", "epochs": args["epochs"],
                                                       "drop_qc_outliers": True,
                                                       **({} if args.get("cross_fit") is None
                                                          else {"cross_fit": args["cross_fit"]}),
                                                       **args.get("params", {})})
    return NormativeModel.load(out), fit_s, peak


def _run(work: Path, args: dict, rule: str | None) -> dict:
    from anomaly.io import find_subjects
    from anomaly.normative.recalibrate import recalibrate
    from benchmarks._classical import ClassicalReference

    rule = rule or DEFAULT_COMBINE_RULE
    specs = cohort_specs(args["seed"], args["healthy"], args["patients"], args["test_controls"])
    t0 = time.perf_counter()
    modalities = tuple(args["modalities"]) if args.get("modalities") else None
    bids = {k: _simulate(work, k, specs[k], args["resolution"], modalities, args.get("missing_pet", 0.0))
            for name in args["settings"] for k in SETTINGS[name][:2]}
    sim_seconds = time.perf_counter() - t0
    models, fits, classical = {}, {}, {}
    results, ablation, curves = {}, {}, {}
    for name in args["settings"]:
        train, test, recal = SETTINGS[name]
        if train not in models:
            models[train], fit_s, peak = _fit(work, train, bids[train], args)
            m = models[train]
            fits[train] = {"fit_seconds": fit_s, "fit_peak_mb": peak, "method_used": m.method_,
                           "self_check": (m.self_check_ or {}).get("methods"),
                           "qc_dropped": sorted(getattr(m, "qc_dropped_", None) or {})}
            grid = m.grid_
            classical[train] = ClassicalReference(grid, m.mask_, m._reference_masks(grid)["cerebellum"]).fit(
                find_subjects(bids[train], group="control"))
        model = models[train]
        if recal:
            model = recalibrate(model, find_subjects(bids[test], group="control"))
        ev = evaluate(model, classical[train], find_subjects(bids[test], group="patient"),
                      bids[test] / "derivatives" / "simulation", default_method())
        results[name] = {m: {k: float(v) for k, v in by_rule[rule].items()}
                         for m, by_rule in ev["metrics"].items()}
        ablation[name] = {m: {r: float(v["focal_auprc"]) for r, v in by_rule.items()}
                          for m, by_rule in ev["metrics"].items() if not m.startswith("classical")}
        curves[name] = ev["curves"]
        print(f"[{name}] " + ", ".join(f"{m} {results[name][m]['focal_auprc']:.3f}" for m in results[name]),
              flush=True)
    return {"settings": args, "rule": rule, "machine": machine(), "sim_seconds": sim_seconds, "fits": fits,
            "results": results, "ablation": ablation, "pr_curves": curves, "targets": detection_targets(results)}


ROWS = [("focal AUPRC (pooled)", "focal_auprc", "{:.3f}"), ("focal AUPRC (median per patient)",
        "focal_auprc_median", "{:.3f}"), ("focal AUROC", "focal_auroc", "{:.3f}"),
        ("focal best Dice", "focal_dice", "{:.3f}"), ("all-lesion AUPRC", "all_auprc", "{:.3f}")]


def markdown(result: dict) -> str:
    """The results tables (Markdown) with header lines, from :func:`run` or its JSON."""
    st = result["settings"]
    header = (f"Detection benchmark (realistic variation): {st['healthy']} training controls, "
              f"{st['patients']} patients and {st['test_controls']} local controls per setting, "
              f"{st['resolution']:g} mm, AE {st['epochs']} epochs, seed {st['seed']}, "
              f"modality rule {result.get('rule', 'mean')}"
              + (f", modalities {' '.join(st['modalities'])}" if st.get("modalities") else "")
              + (f", {100 * st['missing_pet']:g}% of patients without PET" if st.get("missing_pet") else "")
              + (f", model params {json.dumps(st['params'])}" if st.get("params") else ""))
    lines = [header, "",
             f"Machine: {result['machine']}; simulation {result['sim_seconds']:.0f} s", ""]
    methods = [m for m in METHODS if m in next(iter(result["results"].values()))]
    references = [m for m in ("classical", "classical+rim", "zscore") if m in methods]
    lines += ["| setting | metric | " + " | ".join(methods) + " | "
              + " | ".join(f"default / {m}" for m in references) + " |",
              "|---|---|" + "---|" * (len(methods) + len(references))]
    for name, res in result["results"].items():
        res = {m: nan_for_none(v) for m, v in res.items()}
        for label, key, fmt in ROWS:
            cells = [fmt.format(res[m][key]) for m in methods]
            ratios = [res["default"][key] / res[m][key] if res[m][key] else float("nan") for m in references]
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " | "
                         + " | ".join(f"{r:.2f}" for r in ratios) + " |")
    variants = [v for v in POSTPROCESS if any(f"{m}+{v}" in r for r in result["results"].values()
                                              for m in POSTPROCESSED_METHODS)]
    if variants:
        lines += ["", ("Post-processing of the anomaly map (focal AUPRC / best Dice; first column: the "
                        "model's own, as the toolkit writes it; raw: none):"), "",
                  "| setting | method | model's | " + " | ".join(variants) + " |", "|---|---|---|" + "---|" * len(variants)]
        for name, res in result["results"].items():
            for m in POSTPROCESSED_METHODS:
                if m not in res:
                    continue
                cells = [f"{res[k]['focal_auprc']:.3f} / {res[k]['focal_dice']:.3f}" if k in res else "-"
                         for k in (m, *(f"{m}+{v}" for v in variants))]
                lines.append(f"| {name} | {m} | " + " | ".join(cells) + " |")
    lines += ["", "Focal AUPRC by modality-combination rule:", "",
              "| setting | method | " + " | ".join(RULES) + " |", "|---|---|" + "---|" * len(RULES)]
    for name, by_method in result["ablation"].items():
        for m, by_rule in by_method.items():
            lines.append(f"| {name} | {m} | " + " | ".join(f"{nan_for_none(by_rule)[r]:.3f}" for r in RULES) + " |")
    lines += ["", "| training cohort | fit (s) | peak (MB) | self-check AUPRC ae / zscore / hybrid | auto picks |",
              "|---|---|---|---|---|"]
    for key, f in result["fits"].items():
        sc = f.get("self_check") or {}
        auprc = " / ".join(f"{sc[m]['auprc']:.3f}" if m in sc else "-" for m in ("ae", "zscore", "hybrid"))
        fit_s, peak = nan_for_none({"a": f["fit_seconds"], "b": f["fit_peak_mb"]}).values()
        lines.append(f"| {key} | {fit_s:.0f} | {peak:.0f} | {auprc} | {f['method_used']} |")
    return "\n".join(lines)


def plot_pr_curves(result: dict, path: Path) -> Path:
    """Precision-recall curves of the focal lesions in the first setting, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = next(iter(result["pr_curves"]))
    res, curves = result["results"][name], result["pr_curves"][name]
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    try:
        for method, c in curves.items():
            ax.plot(c["recall"], c["precision"], lw=1.4, drawstyle="steps-post",
                    label=f"{method}: AUPRC {res[method]['focal_auprc']:.3f}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall (focal-lesion voxels)")
        ax.set_ylabel("precision")
        ax.set_title(f"Focal lesions, {name}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    except BaseException:
        plt.close(fig)
        raise
    return save_figure(fig, path)


def main(argv=None) -> dict:
    """Command line; returns the :func:`run` result (``args`` added)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--healthy", type=int, default=60, help="training controls (default 60)")
    parser.add_argument("--patients", type=int, default=20, help="test patients per setting (default 20)")
    parser.add_argument("--test-controls", type=int, default=8,
                        help="local controls per test cohort, used for recalibration (default 8)")
    parser.add_argument("--resolution", type=float, default=3.0, help="mm (default 3)")
    parser.add_argument("--epochs", type=int, default=20, help="autoencoder epochs (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cross-fit", type=int, metavar="K",
                        help="fit-normative --cross-fit K: K cross-fitted networks (default: the toolkit's)")
    parser.add_argument("--params", metavar="JSON", default="{}",
                        help="extra NormativeModel keyword arguments for the fits, as a JSON object, e.g. "
                             "'{\"channels\": [32, 64, 128, 256], \"augment\": 1}' (default: none; "
                             "resolution, epochs and cross_fit have their own options; a seed here "
                             "changes the model's seed only, not the simulated cohorts)")
    parser.add_argument("--settings", nargs="+", choices=tuple(SETTINGS), default=list(SETTINGS),
                        help="settings to run (default: all)")
    parser.add_argument("--modalities", nargs="+", choices=ALL_MODALITIES, metavar="MOD",
                        help="modalities of the simulated cohorts, e.g. T1w pet (what the independent "
                             "evaluation cohort has; default: the simulator's T1w FLAIR pet)")
    parser.add_argument("--missing-pet", type=float, default=0.0, metavar="FRACTION",
                        help="fraction of each test cohort's patients simulated without PET, e.g. 0.15 "
                             "as in the independent evaluation (default 0)")
    parser.add_argument("--rule", choices=RULES, help="modality rule of the main table (default: the toolkit's)")
    parser.add_argument("--out-dir", type=Path, help="keep data and models here (default: temporary)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument("--figure", type=Path, help="also save the focal precision-recall curves (PNG)")
    parser.add_argument("--quick", action="store_true",
                        help="4 mm, 16 controls, 6 patients, 8 epochs, in-domain and site shift only")
    args = parser.parse_args(argv)
    if not 0.0 <= args.missing_pet < 1.0:
        parser.error(f"--missing-pet: expected a fraction in [0, 1), got {args.missing_pet}")
    if args.missing_pet and args.modalities is not None and "pet" not in args.modalities:
        parser.error("--missing-pet needs pet among --modalities")
    try:
        params = parse_model_params(args.params, RESERVED_PARAMS)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    if args.quick:
        args.healthy, args.patients, args.test_controls, args.resolution, args.epochs = 16, 6, 5, 4.0, 8
        args.settings = ["in-domain", "site-shift", "site-shift-recal"]
    result = run(healthy=args.healthy, patients=args.patients, test_controls=args.test_controls,
                 resolution=args.resolution, epochs=args.epochs, seed=args.seed, settings=tuple(args.settings),
                 out_dir=args.out_dir, rule=args.rule, cross_fit=args.cross_fit, params=params,
                 modalities=None if args.modalities is None else tuple(args.modalities),
                 missing_pet=args.missing_pet)
    result["args"] = {k: str(v) for k, v in vars(args).items()}
    print()
    print(markdown(result))
    print("targets: " + "; ".join(f"{t['target']}: {t['value']} ({'met' if t['met'] else 'NOT met'})"
                                  for t in result["targets"]))
    if args.json:
        write_json(result, args.json)
    if args.figure:
        print(f"precision-recall curves: {plot_pr_curves(result, args.figure)}")
    return result


if __name__ == "__main__":
    main()
