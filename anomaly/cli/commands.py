"""The command functions: parsed arguments in, library calls, exit status out.

Each ``cmd_<name>(args)`` turns the ``argparse.Namespace`` of one subcommand into
keyword arguments of the library and returns the exit status. Heavy libraries (torch,
nilearn, ...) are imported inside the functions so that ``anomaly --help`` is instant.
``anomaly demo`` runs :data:`PIPELINE` in order (:mod:`anomaly.cli.demo`).
"""

from __future__ import annotations

import argparse

from anomaly.cli.status import EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    """``anomaly simulate``: a simulated BIDS cohort with ground truth."""
    from anomaly.simulate import MODALITIES, simulate_cohort, simulation_config

    config = simulation_config(args.variation, site=args.site)
    if args.space != "mni":
        from dataclasses import replace

        config = replace(config, space=args.space)
    out = simulate_cohort(args.out_dir, n_healthy=args.healthy, n_patients=args.patients, seed=args.seed,
                          resolution=args.resolution, label_noise_sd=args.label_noise,
                          missing_fraction=args.missing_fraction, missing_modalities=args.missing_modalities,
                          n_jobs=args.jobs,
                          progress=not args.quiet, config=config,
                          modalities=args.modalities or MODALITIES)
    print(f"simulated {args.healthy} controls and {args.patients} patients in {out}")
    return EXIT_OK


def cmd_fit_normative(args: argparse.Namespace) -> int:
    """``anomaly fit-normative``: fit on the controls, save the model folder."""
    import shutil

    from anomaly.io import AnomalyInputError, check_output_dir, find_subjects

    if args.prepare:
        from anomaly.cli.prepare import prepare_training_controls

        args.bids_dir = prepare_training_controls(args)
    subjects = find_subjects(args.bids_dir, group="control")
    created = not args.out.exists()
    out = check_output_dir(args.out, inputs=[args.bids_dir])
    try:
        model = _fit_normative_model(args, subjects, out)
    except AnomalyInputError:
        if created:  # leave nothing half-written behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    from anomaly.normative.trainer import init_distributed

    if not init_distributed(args.device).is_main:
        return EXIT_OK
    model.save(out)
    if model.history_:
        from anomaly.report.figures import plot_loss_curve

        plot_loss_curve(out / "training_log.csv", out / "loss_curve.png")
    for checkpoint in out.glob("checkpoint*.pt"):  # one per network when cross-fitting
        checkpoint.unlink(missing_ok=True)
    chosen = f"{args.method} -> {model.method_}" if model.method_ != args.method else args.method
    print(f"wrote {chosen} model ({', '.join(model.modalities_)}; "
          f"{model.n_train_} training / {model.n_calibration_} calibration controls) to {out}")
    from anomaly.cli.scorer import coverage_text

    # Said once here and recorded in the model (reports list it); score does not repeat it.
    for name, coverage in model.atlas_coverage_.items():
        print(f"atlas {name}: {coverage_text(coverage, model.grid_.resolution)}")
    return EXIT_OK


def _fit_normative_model(args: argparse.Namespace, subjects, out):
    from anomaly.normative import NormativeModel

    model = NormativeModel(args.method, modalities=args.modalities, resolution=args.resolution,
                           epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                           val_fraction=args.val_fraction, pet_reference=args.pet_reference,
                           seed=args.seed, device=args.device, augment=args.augment,
                           median_filter=args.median_filter, erode_mask=args.erode_mask,
                           cross_fit=args.cross_fit, pet_peak_search=args.pet_peak_search,
                           modality_rule=args.modality_rule, map_smoothing=args.map_smoothing,
                           map_rim=args.map_rim,
                           lesion_directions=dict(args.lesion_direction) if args.lesion_direction else None)
    model.fit(subjects, workdir=out, resume=args.resume, progress=not args.quiet,
              num_workers=args.workers, keep_cache=args.keep_cache, drop_qc_outliers=args.drop_qc_outliers)
    for reason in model.qc_dropped_.values():
        print(f"dropped control (QC outlier): {reason}")
    return model


def cmd_score(args: argparse.Namespace) -> int:
    """``anomaly score``: see :func:`anomaly.cli.score.score_command`."""
    from anomaly.cli.score import score_command

    if args.prepare:
        from anomaly.cli.prepare import prepare_score_inputs

        args.inputs = prepare_score_inputs(args)
    return score_command(
        args.inputs, model_dir=args.model, out_dir=args.out, atlases=args.atlas,
        participant_labels=args.participant_label, modalities=args.modality, subject=args.subject,
        age=args.age, sex=args.sex, group=args.group, shard=args.shard, crs_model=args.crs_model,
        figures=not args.no_figures, device=args.device, progress=not args.quiet, n_jobs=args.jobs,
        strict=args.strict, force=args.force, native_maps=args.native_maps)


def cmd_qc(args: argparse.Namespace) -> int:
    """``anomaly qc``: see :func:`anomaly.cli.qc.qc_command`."""
    from anomaly.cli.qc import qc_command

    return qc_command(args.bids_dir, model_dir=args.model, out_dir=args.out,
                      participant_labels=args.participant_label, group=args.group, progress=not args.quiet)


def cmd_fit_crs(args: argparse.Namespace) -> int:
    """``anomaly fit-crs``: train and cross-validate the CRS-R regressor."""
    from anomaly.cli.crs import fit_crs

    kwargs = {} if args.epochs is None else {"epochs": args.epochs}
    kwargs["params"] = {"architecture": args.architecture, "global_coupling": args.global_coupling}
    if args.channels is not None:
        kwargs["params"]["channels"] = args.channels
    fit_crs(args.scores_dir, args.participants, args.out, loss=args.loss, cv=args.cv, atlas=args.atlas,
            lds=args.lds, curriculum=None if args.curriculum == "none" else args.curriculum,
            n_seeds=args.seeds, mcs_cut=args.mcs_cut, seed=args.seed, features=args.features,
            global_features=args.global_features, n_jobs=args.jobs, progress=not args.quiet, **kwargs)
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    """``anomaly predict``: CRS-R predictions with explanation maps."""
    from anomaly.cli.crs import predict_crs

    predict_crs(args.scores_dir, args.model, args.out, maps_dir=args.maps_dir,
                participant_ids=args.participant_label, progress=not args.quiet)
    return EXIT_OK


def cmd_group(args: argparse.Namespace) -> int:
    """``anomaly group``: group maps and region correlations with the CRS-R."""
    from anomaly.cli.crs import group_analysis

    group_analysis(args.scores_dir, args.participants, args.out, atlas=args.atlas, crs_model=args.crs_model)
    return EXIT_OK


def cmd_calibrate(args: argparse.Namespace) -> int:
    """``anomaly calibrate``: see :func:`anomaly.cli.calibrate.calibrate_command`."""
    from anomaly.cli.calibrate import calibrate_command

    return calibrate_command(args)


def cmd_prepare(args: argparse.Namespace) -> int:
    """``anomaly prepare``: see :mod:`anomaly.cli.prepare`."""
    from anomaly.cli.prepare import cmd_prepare as run

    return run(args)


#: The pipeline's commands, in the order a study runs them (``anomaly demo`` adds itself).
PIPELINE = {"simulate": cmd_simulate, "prepare": cmd_prepare, "fit-normative": cmd_fit_normative, "qc": cmd_qc,
            "score": cmd_score,
            "fit-crs": cmd_fit_crs, "predict": cmd_predict, "group": cmd_group,
            "calibrate": cmd_calibrate}
