"""The detection and training benchmarks' --params option (benchmarks/detection.py)."""

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
