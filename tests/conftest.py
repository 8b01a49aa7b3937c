"""Shared pytest fixtures: seeded random generator, headless matplotlib, one torch thread."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded random generator so that every test is reproducible."""
    return np.random.default_rng(20261129)


@pytest.fixture(autouse=True, scope="session")
def _single_torch_thread():
    """Keep torch on one thread: CI has 2 cores and tests run small tensors."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        yield
        return
    torch.set_num_threads(1)
    yield


# ---------------------------------------------------------------------------
# Session-wide simulated cohort and fitted models (4 mm, tiny), shared by the
# normative, scoring, CLI and report tests so that each is built only once.
SIM_HEALTHY = 10
SIM_PATIENTS = 6
AE_TEST_SETTINGS = dict(resolution=4.0, epochs=12, batch_size=1, channels=(8, 16, 32, 64), lr=3e-3,
                        val_fraction=0.3, seed=0, device="cpu")


@pytest.fixture(scope="session")
def sim_cohort(tmp_path_factory):
    """A simulated BIDS cohort at 4 mm (10 controls, 6 patients) with ground truth."""
    from anomaly.simulate import simulate_cohort

    out = tmp_path_factory.mktemp("sim") / "bids"
    simulate_cohort(out, n_healthy=SIM_HEALTHY, n_patients=SIM_PATIENTS, seed=7, resolution=4.0,
                    missing_fraction=0.0, progress=False)
    return out


@pytest.fixture(scope="session")
def zscore_model_dir(sim_cohort, tmp_path_factory):
    """A z-score normative model folder fitted on the simulated controls."""
    from anomaly.io import find_subjects
    from anomaly.normative import NormativeModel

    out = tmp_path_factory.mktemp("models") / "zscore"
    model = NormativeModel("zscore", resolution=4.0, seed=0, device="cpu")
    model.fit(find_subjects(sim_cohort), progress=False)
    model.save(out)
    return out


@pytest.fixture(scope="session")
def ae_model_dir(sim_cohort, tmp_path_factory):
    """A small denoising-autoencoder model folder fitted on the simulated controls."""
    from anomaly.io import find_subjects
    from anomaly.normative import NormativeModel

    out = tmp_path_factory.mktemp("models") / "ae"
    model = NormativeModel("ae", **AE_TEST_SETTINGS)
    model.fit(find_subjects(sim_cohort), workdir=out, progress=False)
    model.save(out)
    return out


def pet_baseline_auroc(model_dir: Path, bids: Path) -> float:
    """Model-free detection baseline: voxel AUROC of the negated PET SUVR for the focal
    lesions of the simulated patients in ``bids``.

    Uses the preprocessing of the model in ``model_dir`` (grid, mask, SUVR reference) but
    no normative model; voxels changed only by global hypometabolism are left out, as in
    every detection test. A detector's test asserts that it beats this number.
    """
    from sklearn.metrics import roc_auc_score

    from anomaly.io import find_subjects
    from anomaly.normative import NormativeModel
    from anomaly.simulate.truth import read_truth

    model = NormativeModel.load(model_dir)
    truth = Path(bids) / "derivatives" / "simulation"
    scores, labels = [], []
    for subject in find_subjects(bids, group="patient"):
        truth_masks = read_truth(truth, subject.label, model.grid_, model.mask_)
        focal, evaluated = truth_masks.focal, truth_masks.focal_evaluated
        pet = model.preprocess(subject.images).data[model.modalities_.index("pet")]
        scores.append(-pet[evaluated])
        labels.append(focal[evaluated])
    return float(roc_auc_score(np.concatenate(labels), np.concatenate(scores)))
