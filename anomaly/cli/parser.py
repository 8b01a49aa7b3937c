"""The argument parser of ``anomaly``: one function per subcommand's arguments.

Only argparse and the standard library are imported here, so that ``anomaly --help``
answers at once. Usage errors are one line and exit status 2 (:mod:`anomaly.cli.status`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from anomaly import __version__
from anomaly.cli.status import EXIT_BAD_INPUT
from anomaly.constants import COMBINE_RULES, DEFAULT_COMBINE_RULE, MRI_MARGIN_Z

#: ``--registration`` choices (anomaly.registration.MODES; spelled here to keep --help instant).
REGISTRATION_MODES = ("fast", "accurate")
#: Flags without a value that may come before the BIDS-App positional arguments.
_BIDS_APP_LEADING_FLAGS = ("--debug", "--quiet", "--no-figures")


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (no usage block), exit status 2."""

    def error(self, message: str):  # noqa: D102 - argparse API
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


# --------------------------------------------------------------------------- value types
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0; got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number >= 0; got {text}")
    return value


def _resolution(text: str) -> float:
    value = float(text)
    if not 1.0 <= value <= 8.0:
        raise argparse.ArgumentTypeError(f"expected a voxel size in mm between 1 and 8; got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1; got {text}")
    return value


def _age(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 120.0:  # anomaly.qc.AGE_LIMITS (not imported: --help stays instant)
        raise argparse.ArgumentTypeError(f"expected an age in years between 0 and 120; got {text}")
    return value


def _lesion_direction(text: str) -> tuple[str, str]:
    modality, _, direction = text.partition("=")
    if not modality or direction not in ("lower", "higher", "both"):
        raise argparse.ArgumentTypeError(f"expected MOD=lower|higher|both such as FA=lower; got {text!r}")
    return modality, direction


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N such as 0/4; got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"expected 0 <= I < N in I/N; got {text!r}")
    return index, count


# --------------------------------------------------------------------------- subcommands
def _add_simulate(sub, common) -> None:
    p = sub.add_parser("simulate", parents=[common], help="write a simulated BIDS cohort with ground truth",
                       description="Simulate healthy and coma cohorts (T1w, FLAIR, FDG PET) in MNI space, "
                                   "with lesion masks and true CRS-R under derivatives/simulation/.")
    p.add_argument("out_dir", type=Path, help="new (or empty) output folder")
    p.add_argument("--healthy", type=int, default=20, help="number of controls (default 20)")
    p.add_argument("--patients", type=int, default=10, help="number of patients (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--resolution", type=_resolution, default=2.0, help="voxel size in mm (default 2)")
    p.add_argument("--label-noise", type=float, default=1.5, help="SD of CRS-R label noise (default 1.5)")
    p.add_argument("--missing-fraction", type=float, default=0.1,
                   help="fraction of patients missing one modality (default 0.1)")
    p.add_argument("--missing-modalities", nargs="+", metavar="M",
                   help="the modalities a patient may miss (default: any written one); e.g. "
                        "'--missing-modalities pet --missing-fraction 0.15' for a cohort where 15%% of "
                        "the patients had no PET")
    p.add_argument("--jobs", type=_positive_int, default=1, help="worker processes (default 1)")
    p.add_argument("--variation", choices=("default", "realistic"), default="default",
                   help="healthy variation: default (smooth 2 mm warps) or realistic (3-8 mm multi-scale "
                        "warps, variable atrophy and cortex, bias, regional PET physiology, PET 4-9 mm)")
    p.add_argument("--site", choices=("a", "b", "c"),
                   help="scanner profile (resolution, noise, contrast, bias); simulate controls on one site "
                        "and patients on another for a site shift (default: in-domain mixture)")
    p.add_argument("--modalities", nargs="+", metavar="M",
                   help="modalities to write among T1w T2w FLAIR ADC pet (default T1w FLAIR pet)")
    p.add_argument("--space", choices=("mni", "native"), default="mni",
                   help="mni (default): images on the MNI152 grid; native: each subject as off a scanner "
                        "(random pose within 12 degrees and 20 mm, head scale 0.94-1.06, smooth warp, "
                        "1x1x1.3 mm MRI and 2.5 mm PET voxels at 2 mm), truth in both spaces; run "
                        "'anomaly prepare' on it")


def _add_fit_normative(sub, common) -> None:
    p = sub.add_parser("fit-normative", parents=[common], help="train a normative model on the controls",
                       description="Fit a normative model on the participants whose group is 'control'.")
    p.add_argument("bids_dir", type=Path, help="BIDS dataset with participants.tsv")
    p.add_argument("--out", type=Path, required=True, help="model folder to write")
    p.add_argument("--method", choices=("hybrid", "ae", "zscore", "auto"), default="hybrid",
                   help="hybrid (default: per-voxel mean of the autoencoder's and the voxelwise model's z "
                        "maps; the PET from the peak-searched voxelwise model alone), ae (denoising autoencoder), zscore (voxelwise z-score model) or auto (fit "
                        "the hybrid model; switch to ae or zscore only if it beats hybrid in every held-out "
                        "control of the self-check: injected regional hypometabolism and lesions)")
    p.add_argument("--modalities", nargs="+", metavar="M",
                   help="BIDS suffixes to model (default: all that every control has)")
    p.add_argument("--resolution", type=_resolution, default=2.0, help="model grid voxel size in mm (default 2)")
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help="training epochs of each network (default 20, fewer once a network trains on more "
                        "than 40 controls, so that it takes at most 400 optimisation steps and the fit time "
                        "stops growing with the cohort)")
    p.add_argument("--batch-size", type=_positive_int, default=2, help="subjects per batch (default 2)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    p.add_argument("--val-fraction", type=_fraction, default=0.2,
                   help="with --cross-fit 1: controls held out for validation and calibration (default 0.2)")
    p.add_argument("--augment", type=float, default=0.0, metavar="S",
                   help="strength of the autoencoder's training augmentation (smooth warps, bias field, "
                        "contrast; reproducible from --seed); 0 = off (default), 1 = about 4 mm warps")
    p.add_argument("--cross-fit", type=_positive_int, default=2, metavar="K",
                   help="cross-fitted calibration of the autoencoder: K networks, each trained on all "
                        "controls but one fold of K, every control calibrated by the network that did not "
                        "see it, a new subject scored by the mean of the K networks' z maps (default 2: "
                        "training costs about 1.4 times one network, scoring two forward passes); 1 = one "
                        "network calibrated on the --val-fraction held out")
    p.add_argument("--median-filter", type=_non_negative_int, default=None, metavar="N",
                   help="at scoring, median-filter the combined anomaly map over N voxels along each axis "
                        "in turn; 0 = off; default: about 10 mm (5 voxels at 2 mm, 3 at 3-4 mm), which "
                        "raised the focal AUPRC on the realistic benchmark (README)")
    p.add_argument("--map-smoothing", type=_non_negative_float, default=None, metavar="SIGMA",
                   help="at scoring, after the median filter, smooth the combined anomaly map with a "
                        "Gaussian of this sigma in voxels (zero outside the brain, so its edge is lowered "
                        "too); 0 = off (default: with the rim it lowered the focal AUPRC on the realistic "
                        "benchmark, README)")
    p.add_argument("--map-rim", type=_non_negative_float, default=None, metavar="N",
                   help="at scoring, extend the combined anomaly map over a rim of N voxels outside the "
                        "brain mask, each rim voxel taking its nearest brain voxel's value, where a "
                        "registered patient's brain still reaches beyond the template's; 0 = off; "
                        "default: 8 mm (4 voxels at 2 mm, 2 at 4 mm), which raised the focal AUPRC on "
                        "the realistic benchmark (README)")
    p.add_argument("--pet-peak-search", type=_non_negative_int, default=None, metavar="N",
                   help="PET peak search of the voxelwise model (after 3D-SSP): each PET voxel takes "
                        "the highest uptake in a cube of N voxels, before calibration and at scoring, so "
                        "that a few mm of misregistration of the cortex do not inflate the controls' SD; "
                        "with it, the hybrid takes its PET z from the voxelwise model alone; 0 = off; "
                        "default: about 12 mm (7 voxels at 2 mm, 5 at 3 mm, 3 at 4 mm) (README)")
    p.add_argument("--modality-rule", choices=COMBINE_RULES, default=DEFAULT_COMBINE_RULE,
                   help="how the modalities' z maps combine into the anomaly map: pet-led (default: where "
                        "PET is present its deviation, unless an MRI deviation exceeds it by more than "
                        f"{MRI_MARGIN_Z:g} z; elsewhere the largest MRI deviation), max (the largest "
                        "deviation of any modality: choose it when lesions may show in MRI alone), "
                        "stouffer or mean (README)")
    p.add_argument("--erode-mask", type=_non_negative_int, default=0, metavar="N",
                   help="at scoring, set the combined anomaly map to 0 within N voxels of the brain mask's "
                        "edge (misregistered outlines); 0 = off (default)")
    p.add_argument("--pet-reference", choices=("cerebellum", "brainstem", "global"), default="cerebellum",
                   help="PET SUVR reference region (default cerebellum)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default auto")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted training in --out")
    p.add_argument("--keep-cache", action="store_true", help="keep preprocessed arrays in --out/cache")
    p.add_argument("--drop-qc-outliers", action="store_true",
                   help="leave out (and list) the controls that quality control finds to be clear outliers "
                        "against the others, instead of refusing to fit (README, 'Quality control')")
    p.add_argument("--lesion-direction", action="append", type=_lesion_direction, metavar="MOD=DIR",
                   help="direction a lesion pushes modality MOD: lower, higher or both (two-sided); "
                        "repeatable, e.g. --lesion-direction FA=lower --lesion-direction cbf=lower "
                        "(default: built-in for T1w, FLAIR, T2w, pet...; both for unknown modalities)")
    _add_prepare_options(p, "BIDS_DIR is in native space: run 'anomaly prepare' on its controls into "
                            "OUT_prepared first (resumable), then fit on the prepared images")


def _add_prepare_options(p: argparse.ArgumentParser, prepare_help: str) -> None:
    """``--prepare`` and its ``--registration`` choice (fit-normative and score)."""
    p.add_argument("--prepare", action="store_true", help=prepare_help)
    p.add_argument("--registration", choices=REGISTRATION_MODES, default="fast",
                   help="registration of --prepare (default fast)")


def _add_score(sub, common) -> None:
    p = sub.add_parser("score", parents=[common], help="anomaly maps, region tables and reports",
                       description="Score subjects: INPUT is one subject's NIfTI file(s) or a BIDS dataset "
                                   "folder (all patients, or --participant-label). The BIDS-App form "
                                   "'anomaly BIDS_DIR OUT_DIR participant --model M [...]' does the same.")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                   help="NIfTI file(s) of one subject (sub-<label>_<suffix>.nii.gz, or see --modality), "
                        "or one BIDS dataset folder")
    p.add_argument("--model", type=Path, required=True, help="normative model folder")
    p.add_argument("--out", type=Path, required=True, help="output folder (BIDS derivatives)")
    p.add_argument("--atlas", nargs="+", default=None, metavar="NAME|PATH",
                   help="atlas name(s) or label image path(s) (default neuromorphometrics)")
    p.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                   help="subjects to score (with or without 'sub-')")
    p.add_argument("--modality", nargs="+", metavar="M",
                   help="modality (BIDS suffix: T1w, FLAIR, pet...) of each input file, in order, "
                        "when the file names have no BIDS suffix")
    p.add_argument("--subject", metavar="LABEL", help="subject label for file inputs without sub-<label>")
    p.add_argument("--age", type=_age, help="age of a single subject given as files (0-120 years)")
    p.add_argument("--sex", choices=("M", "F"), help="sex of a single subject given as files")
    p.add_argument("--group", choices=("patient", "control", "all"), default="patient",
                   help="which participants of a BIDS dataset to score (default patient)")
    p.add_argument("--shard", type=_shard, metavar="I/N",
                   help="score only subjects I, I+N, I+2N... of the sorted list (I is 0-based: "
                        "shards 0/N..N-1/N together score every subject once; e.g. "
                        "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT with --array=0-(N-1)); "
                        "shards may share --out")
    p.add_argument("--crs-model", type=Path, help="CRS-R model folder: add the prediction to reports")
    p.add_argument("--no-figures", action="store_true",
                   help="skip figures and HTML reports (faster; maps and tables are still written)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default auto")
    p.add_argument("--jobs", type=_positive_int, default=1, metavar="N",
                   help="score N subjects at a time in worker processes, each loading the model once "
                        "(default 1; outputs are the same; torch threads are shared out over the cores)")
    p.add_argument("--force", action="store_true",
                   help="score images that quality control refuses (wrong modality, inverted contrast, "
                        "not in MNI space); their outputs are marked (values qc.forced, report banner)")
    p.add_argument("--strict", action="store_true",
                   help="refuse the whole batch (exit 2, nothing written) if any subject's input is bad; "
                        "by default bad subjects are named at the start and the others are scored")
    p.add_argument("--native-maps", action="store_true",
                   help="also write the z and anomaly maps in each subject's native T1w space "
                        "(inputs prepared by 'anomaly prepare', which keeps the transforms)")
    _add_prepare_options(p, "INPUT is a native-space BIDS dataset: run 'anomaly prepare' on the subjects "
                            "to score into OUT/prepared first (resumable), then score the prepared images")


def _add_prepare(sub, common) -> None:
    p = sub.add_parser("prepare", parents=[common], help="register native-space images to MNI152 (ANTs)",
                       description="Register every subject's volumes to nilearn's MNI152 2009 template: the "
                                   "T1w rigid, affine then SyN; every other volume rigidly to the T1w (mutual "
                                   "information); a multi-frame PET averaged first. Writes a BIDS-derivatives "
                                   "dataset that fit-normative and score read unchanged, with the transforms, "
                                   "the native brain mask and a QC figure per subject. Resumable.")
    p.add_argument("bids_dir", type=Path, help="BIDS dataset in native (scanner) space; every subject needs a T1w")
    p.add_argument("--out", type=Path, required=True, help="prepared dataset folder (new, or a run to resume)")
    p.add_argument("--registration", choices=REGISTRATION_MODES, default="fast",
                   help="fast (default; ANTs quick SyN on a 2 mm template) or accurate (full SyN; slower)")
    p.add_argument("--resolution", type=_resolution, default=2.0, help="voxel size of the written images (default 2)")
    p.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                   help="subjects to prepare (with or without 'sub-')")
    p.add_argument("--jobs", type=_positive_int, default=1, metavar="N",
                   help="subjects registered at a time in worker processes (default 1; ANTs runs one "
                        "thread per subject, so runs are reproducible)")
    p.add_argument("--shard", type=_shard, metavar="I/N",
                   help="prepare only subjects I, I+N, I+2N... of the sorted list (SLURM arrays: "
                        "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT); shards may share --out")


def _add_qc(sub, common) -> None:
    p = sub.add_parser("qc", parents=[common], help="quality control of a cohort against a model's controls",
                       description="Compute every image's QC numbers, compare them with the normative model's "
                                   "training controls and write a table (qc.tsv) and a page (qc.html) with the "
                                   "decision per subject and image (pass, warn, refuse) before scoring.")
    p.add_argument("bids_dir", type=Path, help="BIDS dataset with participants.tsv")
    p.add_argument("--model", type=Path, required=True, help="normative model folder")
    p.add_argument("--out", type=Path, required=True, help="output folder for qc.tsv and qc.html")
    p.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                   help="subjects to check (with or without 'sub-')")
    p.add_argument("--group", choices=("patient", "control", "all"), default="all",
                   help="which participants to check (default all)")


def _add_fit_crs(sub, common) -> None:
    p = sub.add_parser("fit-crs", parents=[common], help="train and cross-validate the CRS-R regressor",
                       description="Fit the multiple-instance attention regressor of the CRS-R on region "
                                   "tables, with cross-validated metrics and baselines.")
    p.add_argument("scores_dir", type=Path, help="output folder of 'anomaly score'")
    p.add_argument("--participants", type=Path, required=True, help="participants.tsv with crs")
    p.add_argument("--out", type=Path, required=True, help="CRS model folder to write")
    p.add_argument("--loss", default="mae",
                   help="loss or weighted sum, e.g. mse, mae, huber, coral, corn, rank, kappa, soft, "
                        "'coral+rank', 'mse:1,rank:0.5' (default mae)")
    p.add_argument("--architecture", choices=("signed", "gated"), default="signed",
                   help="regressor network: 'signed' (few parameters, region prior from the atlas geometry, "
                        "more damage never raises the prediction) or 'gated' (the earlier gated attention "
                        "with a learned region embedding) (default signed)")
    p.add_argument("--global-coupling", action=argparse.BooleanOptionalAction, default=False,
                   help="correct the focal PET features for each region's coupling to the global cortical "
                        "level (Theil-Sen slopes across the training patients, saved with the model; "
                        "no gain on the tuning cohort, README) (default off)")
    p.add_argument("--cv", default="loo", help="loo, kfold:K or kfold:KxR (default loo)")
    p.add_argument("--atlas", help="atlas of the region tables (default: the only one present)")
    p.add_argument("--lds", action="store_true", help="label distribution smoothing reweighting")
    p.add_argument("--curriculum", choices=("none", "confidence", "self-paced", "random"), default="none",
                   help="training order schedule; 'random' is the growing-set control (default none)")
    p.add_argument("--seeds", type=_positive_int, default=5, help="ensemble members (default 5)")
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help="training epochs (default 100 for the signed network, 300 for the gated one)")
    p.add_argument("--channels", type=_positive_int, default=None,
                   help="signed network: instance channels, each with its own attention pooling "
                        "(default 2: arousal and awareness)")
    p.add_argument("--mcs-cut", type=int, default=8, help="CRS-R cut for MCS-level AUROC (default 8)")
    p.add_argument("--features", metavar="LIST",
                   help="region-table columns given to the regressor and the ridge baseline, comma-separated, "
                        "or 'all' (default: each modality's mean z and pet_focal_logratio_z where present, "
                        "else anomaly_mean)")
    p.add_argument("--global-features", metavar="LIST",
                   help="subject-level values of sub-<label>_scores.json, comma-separated, 'all' or 'none' "
                        "(default global_cortical_pet_percent where present)")
    p.add_argument("--jobs", type=_positive_int, default=1,
                   help="cross-validation folds fitted in parallel processes (default 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _add_predict(sub, common) -> None:
    p = sub.add_parser("predict", parents=[common], help="predict the CRS-R with explanation maps")
    p.add_argument("scores_dir", type=Path, help="output folder of 'anomaly score'")
    p.add_argument("--model", type=Path, required=True, help="CRS model folder from fit-crs")
    p.add_argument("--out", type=Path, required=True, help="predictions TSV to write")
    p.add_argument("--maps-dir", type=Path, help="explanation maps folder (default: the TSV's folder)")
    p.add_argument("--participant-label", nargs="+", metavar="LABEL", help="subjects to predict")


def _add_group(sub, common) -> None:
    p = sub.add_parser("group", parents=[common], help="group maps and region correlations with the CRS-R")
    p.add_argument("scores_dir", type=Path, help="output folder of 'anomaly score'")
    p.add_argument("--participants", type=Path, required=True, help="participants.tsv with crs")
    p.add_argument("--out", type=Path, required=True, help="group output folder")
    p.add_argument("--atlas", help="atlas of the region tables (default: the only one present)")
    p.add_argument("--crs-model", type=Path, help="CRS model folder: add the cohort mean attention")


def _add_calibrate(sub, common) -> None:
    p = sub.add_parser("calibrate", parents=[common], help="recalibrate a normative model on local controls",
                       description="Re-estimate a normative model's z statistics on a few local controls "
                                   "(another scanner or site); the network is unchanged. Writes a new model "
                                   "folder and never changes MODEL_DIR.")
    p.add_argument("model_dir", type=Path, help="normative model folder (from fit-normative)")
    p.add_argument("local_bids", type=Path, help="BIDS dataset whose group 'control' subjects are local controls")
    p.add_argument("--out", type=Path, required=True, help="new model folder to write")
    p.add_argument("--prior-weight", type=float, default=8.0,
                   help="weight, in subjects, of the model's own SD in the new SD (default 8)")


def _add_demo(sub, common) -> None:
    p = sub.add_parser("demo", parents=[common], help="run the whole toolkit on a simulated cohort")
    p.add_argument("--out", type=Path, default=Path("anomaly_demo"), help="output folder (default ./anomaly_demo)")
    p.add_argument("--quick", action="store_true", help="smaller cohort and model (about 2 minutes)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


#: Subcommand -> function adding its arguments, in the order of ``anomaly --help``.
_SUBCOMMANDS = {"simulate": _add_simulate, "prepare": _add_prepare, "fit-normative": _add_fit_normative,
                "qc": _add_qc, "score": _add_score,
                "fit-crs": _add_fit_crs, "predict": _add_predict, "group": _add_group,
                "calibrate": _add_calibrate, "demo": _add_demo}
COMMANDS = tuple(_SUBCOMMANDS)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (one subparser per command)."""
    parser = _Parser(prog="anomaly", description=(
        "Weakly supervised brain anomaly detection: normative models of healthy brains, "
        "atlas-region anomaly scores and CRS-R regression."))
    parser.add_argument("--version", action="version", version=f"anomaly {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in _SUBCOMMANDS.values():
        add(sub, common)
    return parser


def bids_app_argv(argv: list[str]) -> list[str]:
    """Translate ``anomaly BIDS_DIR OUT_DIR participant ...`` (BIDS-App form) to ``score``.

    The BIDS-App specification puts the three positional arguments first; options
    (``--participant_label``, ``--model``...) follow and are passed on unchanged. Flags
    without a value (``--debug``, ``--quiet``, ``--no-figures``) may also come first.
    """
    flags = [a for a in argv[:3] if a in _BIDS_APP_LEADING_FLAGS]
    rest = argv[len(flags):] if argv[:len(flags)] == flags else argv
    if len(rest) >= 3 and rest[0] not in COMMANDS and not any(a.startswith("-") for a in rest[:3]) \
            and rest[2] == "participant":
        return ["score", rest[0], "--out", rest[1], *flags, *rest[3:]]
    return argv
