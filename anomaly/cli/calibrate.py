"""``anomaly calibrate``: recalibrate a normative model's z statistics on local controls.

The network and the channel standardisation stay as they are; the z statistics are
re-estimated on the local controls (:func:`anomaly.normative.recalibrate.recalibrate`)
and the result is written as a new model folder. The input model is never changed.
"""

from __future__ import annotations

import argparse

from anomaly.cli.status import EXIT_OK


def calibrate_command(args: argparse.Namespace) -> int:
    """Load MODEL_DIR, recalibrate on LOCAL_BIDS's controls, save to --out."""
    import shutil

    from anomaly.io import AnomalyInputError, check_output_dir, find_subjects
    from anomaly.normative import NormativeModel
    from anomaly.normative.recalibrate import recalibrate

    model = NormativeModel.load(args.model_dir)
    controls = find_subjects(args.local_bids, group="control")
    created = not args.out.exists()
    out = check_output_dir(args.out, inputs=[args.model_dir, args.local_bids])
    try:
        new = recalibrate(model, controls, prior_weight=args.prior_weight, progress=not args.quiet)
        new.save(out)
    except AnomalyInputError:
        if created:  # leave nothing half-written behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    info = new.recalibration_
    print(f"recalibrated {new.method_} model on {info['n_local_controls']} local controls "
          f"(network unchanged) to {out}")
    return EXIT_OK
