"""Helpers shared by the numbered examples (not an example itself).

The examples import it as ``from _common import ...``: run them as scripts
(``python examples/03_crs_regression.py``), which puts this folder on ``sys.path``.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

from anomaly.io import find_subjects
from anomaly.normative import NormativeModel
from anomaly.cli.scorer import Scorer
from anomaly.simulate import simulate_cohort


def parser(doc: str) -> argparse.ArgumentParser:
    """Argument parser with the options every example has: --quick, --out, --seed."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny 4 mm cohort and few epochs: seconds on a laptop CPU")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: a new temporary folder, printed at the end)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulation and the models")
    return p


def output_dir(out: Path | None, example: str) -> Path:
    """``out`` (created), or a new temporary folder."""
    if out is None:
        return Path(tempfile.mkdtemp(prefix=f"anomaly-{example}-"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def quiet_atlas_warnings() -> None:
    """Coarse grids (4 mm) lose a few tiny atlas labels (vessels, optic chiasm): expected."""
    warnings.filterwarnings("ignore", message=r".*no voxel left after nearest-neighbour resampling.*")


def fit_zscore(bids: Path, resolution: float, seed: int = 0) -> NormativeModel:
    """Fit the classical voxelwise z-score model on a dataset's controls (seconds)."""
    controls = find_subjects(bids, group="control")
    return NormativeModel("zscore", resolution=resolution, seed=seed, device="cpu").fit(controls)


def score_patients(model: NormativeModel, bids: Path, scores: Path, *, figures: bool = False) -> Path:
    """Score every patient of ``bids`` into ``scores`` (what ``anomaly score`` writes).

    Without figures and reports it takes well under a second per patient at 4 mm.
    """
    with Scorer(model) as scorer:  # loads the atlas once; finishes the file writes on exit
        for s in find_subjects(bids, group="patient"):
            scorer.score_subject(s.label, s.images, scores, age=s.age, sex=s.sex, figures=figures)
    return scores


def simulated_scores(out: Path, *, quick: bool, seed: int = 0) -> tuple[Path, Path]:
    """Simulate a cohort in ``out/bids``, fit a z-score model, score the patients in ``out/scores``.

    Returns ``(participants.tsv, scores folder)``. Quick: 6 controls, 20 patients at
    4 mm (about 15 s); otherwise 30 controls, 40 patients at 3 mm (a few minutes).
    """
    n_healthy, n_patients, resolution = (6, 20, 4.0) if quick else (30, 40, 3.0)
    bids = simulate_cohort(out / "bids", n_healthy=n_healthy, n_patients=n_patients, seed=seed,
                           resolution=resolution, n_jobs=1 if quick else -1)
    model = fit_zscore(bids, resolution, seed)
    model.save(out / "model-zscore")
    score_patients(model, bids, out / "scores")
    return bids / "participants.tsv", out / "scores"
