"""The detection and training benchmarks' options (benchmarks/detection.py, benchmarks/training.py)."""

import pytest

from benchmarks._common import parse_model_params
from benchmarks.detection import RESERVED_PARAMS, main


def test_params_are_normative_model_keywords():
    params = parse_model_params('{"channels": [32, 64, 128, 256], "augment": 1, "seed": 3}', RESERVED_PARAMS)
    assert params == {"channels": [32, 64, 128, 256], "augment": 1, "seed": 3}
    assert parse_model_params("{}", RESERVED_PARAMS) == {}


@pytest.mark.parametrize("text, error, match", [
    ("{channels: 3}", ValueError, "not valid JSON"),
    ("[1, 2]", TypeError, "expected a JSON object"),
    ('{"chanels": [8, 16]}', ValueError, "unknown NormativeModel keyword.*chanels"),
    ('{"epochs": 40}', ValueError, "epochs is set by the benchmark's own option"),
])
def test_bad_params_are_refused(text, error, match):
    with pytest.raises(error, match=match):
        parse_model_params(text, RESERVED_PARAMS)


def test_reserved_keywords_are_model_keywords():
    # A reserved name that NormativeModel does not take would never be reached.
    from inspect import signature

    from anomaly.normative import NormativeModel

    assert set(RESERVED_PARAMS) <= set(signature(NormativeModel).parameters)


def test_command_line_refuses_bad_params_before_any_work(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--quick", "--params", '{"nope": 1}'])
    assert exit_info.value.code == 2
    assert "unknown NormativeModel keyword(s) nope" in capsys.readouterr().err


def test_modality_subset_cohorts_hold_only_those_modalities(tmp_path):
    # --modalities T1w pet simulates what the independent evaluation cohort has, in its
    # own folder, so that a reused --out-dir never mixes modality sets.
    from anomaly.io import find_subjects
    from benchmarks.detection import _simulate, cohort_specs

    spec = cohort_specs(seed=3, healthy=1, patients=1, test_controls=1)["test"]
    bids = _simulate(tmp_path, "test", spec, resolution=8.0, modalities=("T1w", "pet"))
    assert bids.name == "test+T1w+pet"
    subjects = find_subjects(bids)
    assert {s.group for s in subjects} == {"control", "patient"}
    assert all(set(s.images) == {"T1w", "pet"} for s in subjects)
    assert _simulate(tmp_path, "test", spec, resolution=8.0).name == "test"


def test_command_line_refuses_an_unknown_modality(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--quick", "--modalities", "T1w", "CT"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'CT'" in capsys.readouterr().err


def test_missing_pet_cohorts_drop_pet_of_some_patients_only(tmp_path):
    # --missing-pet 0.5: half the test patients have no PET, as ~15 % in the independent
    # cohort; the controls keep theirs, and the training cohorts (no patient) are shared.
    from anomaly.io import find_subjects
    from benchmarks.detection import _simulate, cohort_specs

    specs = cohort_specs(seed=3, healthy=1, patients=2, test_controls=1)
    bids = _simulate(tmp_path, "test", specs["test"], resolution=8.0, modalities=("T1w", "pet"), missing_pet=0.5)
    assert bids.name == "test+T1w+pet+nopet50"
    images = {s.label: set(s.images) for s in find_subjects(bids)}
    assert sorted(len(images[p]) for p in ("pt001", "pt002")) == [1, 2]
    assert images["pt001"] | images["pt002"] == {"T1w", "pet"} and images["hc001"] == {"T1w", "pet"}
    train = _simulate(tmp_path, "train", specs["train"], resolution=8.0, modalities=("T1w", "pet"), missing_pet=0.5)
    assert train.name == "train+T1w+pet"


@pytest.mark.parametrize("argv, match", [
    (["--missing-pet", "1.5"], "expected a fraction"),
    (["--missing-pet", "0.2", "--modalities", "T1w", "FLAIR"], "needs pet among --modalities"),
])
def test_command_line_refuses_a_bad_missing_pet(capsys, argv, match):
    with pytest.raises(SystemExit) as exit_info:
        main(["--quick", *argv])
    assert exit_info.value.code == 2
    assert match in capsys.readouterr().err


def test_training_benchmark_takes_the_toolkit_default_length():
    import argparse

    from benchmarks.training import epochs_option
    from benchmarks.training import main as training_main

    assert epochs_option("default") is None and epochs_option("3") == 3
    for bad in ("0", "two"):
        with pytest.raises((ValueError, argparse.ArgumentTypeError)):
            epochs_option(bad)
    with pytest.raises(SystemExit) as exit_info:
        training_main(["--epochs", "0"])
    assert exit_info.value.code == 2
