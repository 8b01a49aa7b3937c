"""``anomaly prepare``: native-space BIDS dataset in, MNI152 BIDS-derivatives dataset out.

A thin wrapper of :func:`anomaly.registration.prepare_dataset`; also used by
``score --native-maps`` to write maps back in native space.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from anomaly.cli.status import EXIT_OK


def cmd_prepare(args: argparse.Namespace) -> int:
    """Run ``anomaly prepare`` from parsed arguments; returns the exit status."""
    from anomaly.registration import prepare_dataset

    records = prepare_dataset(args.bids_dir, args.out, mode=args.registration, resolution=args.resolution,
                              n_jobs=args.jobs, shard=args.shard, participant_labels=args.participant_label,
                              progress=not args.quiet)
    print(f"prepared {len(records)} subject(s) in {args.out} ({args.registration} registration); "
          "run fit-normative or score on that folder")
    return EXIT_OK


def write_native_maps(stat_paths: list[Path], image: Path, label: str) -> list[Path]:
    """Write each MNI-space map again in the subject's native T1w space, next to it.

    Parameters
    ----------
    stat_paths : list of pathlib.Path
        Maps written by ``score`` (``..._stat-z_statmap.nii.gz``...).
    image : pathlib.Path
        One of the subject's input images, inside a dataset written by ``anomaly prepare``.
    label : str
        Subject label without ``sub-``.

    Returns
    -------
    list of pathlib.Path
        The native maps (``space-T1w`` added to the names).

    Raises
    ------
    AnomalyInputError
        If the input was not prepared by ``anomaly prepare`` (no transforms to use).
    """
    from anomaly.io import AnomalyInputError
    from anomaly.registration.native_maps import find_prepared_subject, map_to_native

    subject_dir = find_prepared_subject(image, label)
    if subject_dir is None:
        raise AnomalyInputError(f"{image}: --native-maps needs inputs prepared by 'anomaly prepare' "
                                "(no T1w transforms found for this subject)")
    written = []
    for path in stat_paths:
        name = path.name.replace(f"sub-{label}_", f"sub-{label}_space-T1w_", 1)
        name = name.replace("_space-MNI152NLin2009cAsym", "")
        written.append(map_to_native(path, subject_dir, label, path.with_name(name)))
    return written


def check_prepared(jobs) -> None:
    """Refuse ``--native-maps`` before any work when a subject's inputs were not prepared.

    Parameters
    ----------
    jobs : sequence of ScoreJob
        The subjects to score (``label`` and ``images``).

    Raises
    ------
    AnomalyInputError
        One line naming the first subject whose images have no ``anomaly prepare`` transforms.
    """
    from anomaly.io import AnomalyInputError
    from anomaly.registration.native_maps import find_prepared_subject

    for job in jobs:
        image = next(iter(job.images.values()))
        if find_prepared_subject(image, job.label) is None:
            raise AnomalyInputError(f"{image}: --native-maps needs inputs prepared by 'anomaly prepare' "
                                    "(no T1w transforms found for this subject)")


def native_maps_for_jobs(jobs, out_dir: Path) -> int:
    """After scoring: every scored subject's statistical maps, again in native T1w space.

    Parameters
    ----------
    jobs : sequence of ScoreJob
        The subjects scored (those without maps, e.g. failed ones, are skipped).
    out_dir : pathlib.Path
        Output folder of ``score``.

    Returns
    -------
    int
        Number of native maps written.
    """
    count = 0
    for job in jobs:
        folder = Path(out_dir) / f"sub-{job.label}"
        maps = sorted(p for p in folder.glob(f"sub-{job.label}_*_statmap.nii.gz") if "_space-T1w_" not in p.name)
        if maps:
            count += len(write_native_maps(maps, next(iter(job.images.values())), job.label))
    return count


def _model_resolution(model_dir: Path) -> float:
    """The voxel size of a normative model's grid: prepared images need no finer one."""
    from anomaly.normative import NormativeModel

    # A bad model folder is refused here (one line), before any registration.
    return float(NormativeModel.load(model_dir).grid_.resolution)


def prepare_score_inputs(args: argparse.Namespace) -> list[Path]:
    """``score --prepare``: register the subjects to score into ``OUT/prepared`` first.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``score`` arguments: one BIDS dataset folder as input; the group,
        participant labels and shard select the subjects as ``score`` does. The images
        are written at the model's grid resolution.

    Returns
    -------
    list of pathlib.Path
        The new input of ``score``: the prepared dataset folder.

    Raises
    ------
    AnomalyInputError
        If the input is not one dataset folder, or a subject cannot be prepared.
    """
    from anomaly.io import AnomalyInputError, find_subjects
    from anomaly.registration import prepare_dataset

    if len(args.inputs) != 1 or not Path(args.inputs[0]).is_dir():
        raise AnomalyInputError("--prepare: give one BIDS dataset folder as INPUT "
                                "(for single files, run 'anomaly prepare' on their dataset first)")
    group = None if args.group == "all" else args.group
    labels = [s.label for s in find_subjects(args.inputs[0], participant_labels=args.participant_label,
                                             group=group)]
    out = Path(args.out) / "prepared"
    prepare_dataset(args.inputs[0], out, mode=args.registration, resolution=_model_resolution(args.model),
                    shard=args.shard, participant_labels=labels, progress=not args.quiet)
    return [out]


def prepare_training_controls(args: argparse.Namespace) -> Path:
    """``fit-normative --prepare``: register the controls into ``<OUT>_prepared`` first.

    The prepared dataset sits beside the model folder (not in it: the model folder
    holds the model only) and is reused by a later run (finished subjects are skipped).

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``fit-normative`` arguments (``bids_dir``, ``out``, ``resolution``,
        ``registration``, ``quiet``).

    Returns
    -------
    pathlib.Path
        The new BIDS_DIR of ``fit-normative``: the prepared dataset folder.
    """
    from anomaly.io import find_subjects
    from anomaly.registration import prepare_dataset

    labels = [s.label for s in find_subjects(args.bids_dir, group="control")]
    out = Path(args.out).with_name(Path(args.out).name + "_prepared")
    prepare_dataset(args.bids_dir, out, mode=args.registration, resolution=float(args.resolution),
                    participant_labels=labels, progress=not args.quiet)
    return out
