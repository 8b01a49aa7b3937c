"""Region tables -> RegionBags."""

import json

import numpy as np
import pandas as pd
import pytest

from anomaly.crs import load_region_bags
from anomaly.crs.synthetic import simulate_region_bags, write_scores_dir
from anomaly.io import AnomalyInputError


def write_table(folder, pid, atlas="tiny", index=(1, 2, 3), pet=True):
    sub = folder / pid
    sub.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame({"index": list(index), "name": [f"R{i}" for i in index], "n_voxels": 10,
                       "anomaly_mean": np.arange(len(index), dtype=float), "T1w_z_mean": -1.0,
                       "pet_z_mean": np.nan if not pet else 0.5})
    df.to_csv(sub / f"{pid}_space-MNI152NLin2009cAsym_atlas-{atlas}_regions.tsv", sep="\t", index=False, na_rep="n/a")
    return sub


def test_reads_tables_missing_values_and_globals(tmp_path):
    write_table(tmp_path, "sub-02")
    sub = write_table(tmp_path, "sub-01", pet=False)
    (sub / "sub-01_scores.json").write_text(json.dumps({"global_cortical_pet_percent": 55.0, "qc": {"a": 1},
                                                        "pet_reference": "cerebellum", "flag": True}))
    bags = load_region_bags(tmp_path)
    assert bags.participant_ids == ["sub-01", "sub-02"]
    assert bags.atlas == "tiny"
    assert bags.features.shape == (2, 3, 3) and bags.features.dtype == np.float32
    assert bags.feature_names == ["anomaly_mean", "T1w_z_mean", "pet_z_mean"]
    assert list(bags.region_index) == [1, 2, 3] and bags.region_names == ["R1", "R2", "R3"]
    assert bags.missing[0, :, 2].all() and not bags.missing[1].any()
    assert bags.global_feature_names == ["global_cortical_pet_percent"]
    assert bags.global_features[0, 0] == 55.0 and np.isnan(bags.global_features[1, 0])
    sel = load_region_bags(tmp_path, participant_ids=["02"])
    assert sel.participant_ids == ["sub-02"]


def test_atlas_choice_and_errors(tmp_path):
    with pytest.raises(AnomalyInputError, match="no sub-"):
        load_region_bags(tmp_path)
    write_table(tmp_path, "sub-01")
    write_table(tmp_path, "sub-01", atlas="aal")
    with pytest.raises(AnomalyInputError, match="several atlases"):
        load_region_bags(tmp_path)
    assert load_region_bags(tmp_path, atlas="aal").atlas == "aal"
    with pytest.raises(AnomalyInputError, match="no region tables for atlas"):
        load_region_bags(tmp_path, atlas="other")
    with pytest.raises(AnomalyInputError, match="sub-09"):
        load_region_bags(tmp_path, atlas="tiny", participant_ids=["sub-09"])
    write_table(tmp_path, "sub-02", index=(1, 2, 4))
    with pytest.raises(AnomalyInputError, match=f"{tmp_path}.*sub-02 has different"):
        load_region_bags(tmp_path, atlas="tiny")


def test_synthetic_scores_dir_round_trip(tmp_path):
    cohort = simulate_region_bags(5, n_regions=10, seed=0)
    write_scores_dir(cohort, tmp_path)
    bags = load_region_bags(tmp_path)
    assert bags.feature_names == cohort.bags.feature_names
    assert np.allclose(np.nan_to_num(bags.features), np.nan_to_num(cohort.bags.features), atol=1e-3)
    assert np.array_equal(bags.missing, cohort.bags.missing)
    assert len(bags.feature_names) == 18


def test_select_keeps_the_named_columns_in_order(tmp_path):
    write_table(tmp_path, "sub-01")
    sub = write_table(tmp_path, "sub-02", pet=False)
    (sub / "sub-02_scores.json").write_text(json.dumps({"global_cortical_pet_percent": 40.0, "age": 50}))
    bags = load_region_bags(tmp_path)
    sel = bags.select(["pet_z_mean", "anomaly_mean"], ["age"])
    assert sel.feature_names == ["pet_z_mean", "anomaly_mean"]
    assert np.array_equal(sel.features[0, :, 1], bags.feature("anomaly_mean")[0])
    assert sel.missing[1, :, 0].all() and not sel.missing[1, :, 1].any()
    assert sel.global_feature_names == ["age"] and sel.global_features[1, 0] == 50
    assert bags.select().feature_names == bags.feature_names  # None keeps all
    assert bags.select(global_features=[]).global_features is None
    with pytest.raises(KeyError, match="no feature 'bogus'; available: anomaly_mean, T1w_z_mean"):
        bags.select(["bogus"])
    with pytest.raises(KeyError, match="subject-level value 'x'"):
        bags.select(global_features=["x"])


def test_select_features_defaults_all_none_and_errors(tmp_path):
    from anomaly.crs import select_features
    from anomaly.crs.features import default_features

    write_table(tmp_path, "sub-01")
    bags = load_region_bags(tmp_path)
    assert bags.global_features is None  # no scores JSON: no PET level to default to
    default = select_features(bags)
    # Each modality's mean z by default (the focal PET log ratio too, when present) ...
    assert default.feature_names == ["T1w_z_mean", "pet_z_mean"] and default.global_feature_names == []
    names = ["anomaly_mean", "pet_z_mean", "pet_focal_z_mean", "pet_focal_logratio_z", "ADC_z_mean", "ADC_z_p95"]
    assert default_features(names) == ["pet_z_mean", "pet_focal_logratio_z", "ADC_z_mean"]
    # ... and the combined anomaly for tables without them.
    assert default_features(["anomaly_mean", "anomaly_p95"]) == ["anomaly_mean"]
    bags.global_features = np.array([[52.0, 61.0]], np.float32)
    bags.global_feature_names = ["global_cortical_pet_percent", "age"]
    default = select_features(bags)
    assert default.global_feature_names == ["global_cortical_pet_percent"]
    assert select_features(bags, "all", "all").feature_names == bags.feature_names
    assert select_features(bags, "all", "ALL").global_feature_names == ["global_cortical_pet_percent", "age"]
    listed = select_features(bags, " T1w_z_mean,anomaly_mean ", "none")
    assert listed.feature_names == ["T1w_z_mean", "anomaly_mean"] and listed.global_features is None
    with pytest.raises(AnomalyInputError, match=r"^scores: no feature 'pet_mean'"):
        select_features(bags, "pet_mean", where="scores")
