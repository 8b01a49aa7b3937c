"""CRS model folders: round trip, integrity and version checks."""

import json

import numpy as np
import pytest

from anomaly.crs import MILRegressor, load_crs_model, save_crs_model
from anomaly.crs.synthetic import simulate_region_bags
from anomaly.io import AnomalyModelError


@pytest.fixture
def saved(tmp_path):
    cohort = simulate_region_bags(16, n_regions=8, seed=0)
    model = MILRegressor(loss="coral+rank", epochs=10, n_seeds=3, hidden=6).fit(cohort.bags, cohort.crs)
    folder = save_crs_model(model, tmp_path / "crs", conformal_quantile=2.5, alpha=0.1, mcs_cut=8,
                            cv_metrics=[{"model": "mil", "metric": "mae", "estimate": 1.0}])
    return cohort, model, folder


def test_round_trip_identical_predictions(saved):
    cohort, model, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == ["metadata.json", "weights.safetensors"]
    loaded = load_crs_model(folder)
    assert np.array_equal(loaded.estimator.predict(cohort.bags), model.predict(cohort.bags))
    assert np.array_equal(loaded.estimator.attention(cohort.bags), model.attention(cohort.bags))
    assert loaded.estimator.get_params() == model.get_params()
    pred, lo, hi = loaded.predict_interval(cohort.bags)
    assert np.allclose(hi - lo, np.minimum(pred + 2.5, 23) - np.maximum(pred - 2.5, 0))
    meta = loaded.metadata
    for key in ("format", "kind", "format_version", "toolkit_version", "created", "params", "feature_names",
                "regions", "standardisation", "conformal", "cv_metrics", "files"):
        assert key in meta
    assert meta["kind"] == "crs" and "torch_version" in meta["created"]
    assert len(meta["files"]["weights.safetensors"]) == 64
    assert loaded.atlas == "neuromorphometrics"


def test_weights_are_per_member_and_not_pickled(saved):
    from safetensors.torch import load_file

    _, _, folder = saved
    tensors = load_file(str(folder / "weights.safetensors"))
    assert {k.split(".")[0] for k in tensors} == {"member000", "member001", "member002"}


def _flip_a_byte(path):
    """Tamper with a file: its SHA-256 no longer matches the model's metadata."""
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


def test_tampered_weights_are_refused(saved):
    _, _, folder = saved
    _flip_a_byte(folder / "weights.safetensors")
    with pytest.raises(AnomalyModelError, match="weights.safetensors.*SHA-256"):
        load_crs_model(folder)


def test_incompatible_or_missing_metadata(saved, tmp_path):
    _, _, folder = saved
    meta_path = folder / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["format_version"] = "2.0"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(AnomalyModelError, match="format version"):
        load_crs_model(folder)
    with pytest.raises(AnomalyModelError, match="metadata.json"):
        load_crs_model(tmp_path / "nowhere")


def _as_legacy_crs(folder):
    """Rewrite metadata.json as anomaly 0.1.0 wrote it: format, "1.0", weights{file, sha256}."""
    meta = json.loads((folder / "metadata.json").read_text())
    created = meta.pop("created")
    sha = meta.pop("files")["weights.safetensors"]
    for key in ("format", "kind", "format_version", "toolkit", "toolkit_version"):
        meta.pop(key)
    legacy = {"format": "anomaly-crs-model", "format_version": "1.0", "anomaly_version": "0.1.0",
              "torch_version": created["torch_version"], **meta,
              "weights": {"file": "weights.safetensors", "sha256": sha}}
    (folder / "metadata.json").write_text(json.dumps(legacy))


def test_folder_of_the_previous_layout_still_loads(saved):
    cohort, model, folder = saved
    _as_legacy_crs(folder)
    loaded = load_crs_model(folder)
    assert np.array_equal(loaded.estimator.predict(cohort.bags), model.predict(cohort.bags))
    assert loaded.conformal_quantile == 2.5
    _flip_a_byte(folder / "weights.safetensors")
    with pytest.raises(AnomalyModelError, match="weights.safetensors: SHA-256 does not match"):
        load_crs_model(folder)


def test_a_normative_model_folder_is_not_a_crs_model(saved):
    _, _, folder = saved
    meta = json.loads((folder / "metadata.json").read_text())
    (folder / "metadata.json").write_text(json.dumps(dict(meta, kind="normative")))
    with pytest.raises(AnomalyModelError, match="not an anomaly CRS-R model"):
        load_crs_model(folder)


def test_unknown_device_is_the_shared_input_error():
    from anomaly.io import AnomalyInputError

    cohort = simulate_region_bags(8, n_regions=4, seed=0)
    with pytest.raises(AnomalyInputError, match="--device: expected auto, cpu or cuda; got 'tpu'"):
        MILRegressor(epochs=1, n_seeds=1, device="tpu").fit(cohort.bags, cohort.crs)
