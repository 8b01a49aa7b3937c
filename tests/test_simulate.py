"""Tests of anomaly.simulate: contract of the written dataset, determinism, ground truth.

Everything runs at 4 mm with a handful of subjects: the template is built once per
session (about 3 s) and a subject then takes about 0.1 s.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from anomaly.atlas import Atlas
from anomaly.io import AnomalyInputError
from anomaly.simulate import (
    CAUSAL_FAMILIES,
    DISTRACTOR_REGIONS,
    CRSModel,
    SimulationConfig,
    simulate_cohort,
    simulate_labels,
    simulate_subject,
)

RES = 4
SEED = 7
N_HEALTHY, N_PATIENTS = 3, 4
CEREBELLUM = [n for n in Atlas.load("neuromorphometrics").labels["name"] if "Cerebell" in n]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """A tiny cohort: 3 controls, 4 patients, one of whom misses a modality."""
    out = tmp_path_factory.mktemp("sim") / "bids"
    returned = simulate_cohort(
        out, n_healthy=N_HEALTHY, n_patients=N_PATIENTS, seed=SEED, resolution=RES,
        missing_fraction=0.25, progress=False,
    )
    assert returned == out
    return out


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    """Neuromorphometrics labels on the 4 mm template grid."""
    control = simulate_subject(0, resolution=RES, modalities=("pet",))
    target = nib.Nifti1Image(np.zeros(control.images["pet"].shape, np.int16), control.affine)
    with pytest.warns(UserWarning):  # vessels vanish at 4 mm
        return Atlas.load("neuromorphometrics").resample_to(target).label_array()


def _region_mask(labels: np.ndarray, names: list[str]) -> np.ndarray:
    atlas = Atlas.load("neuromorphometrics")
    table = dict(zip(atlas.labels["name"], atlas.labels["index"]))
    return np.isin(labels, [table[n] for n in names])


def _truth(cohort: Path) -> pd.DataFrame:
    return pd.read_csv(cohort / "derivatives" / "simulation" / "truth.tsv", sep="\t",
                       na_values="n/a", keep_default_na=False)


# ------------------------------------------------------------------ dataset


def test_tree_follows_the_bids_contract(cohort):
    raw = json.loads((cohort / "dataset_description.json").read_text())
    assert raw["DatasetType"] == "raw" and raw["Name"] and raw["BIDSVersion"]
    deriv = cohort / "derivatives" / "simulation"
    description = json.loads((deriv / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    truth = _truth(cohort)
    shapes = set()
    rows = zip(truth["participant_id"], truth["group"], truth["missing_modalities"])
    for pid, group, missing in rows:
        files = {
            "T1w": cohort / pid / "anat" / f"{pid}_T1w.nii.gz",
            "FLAIR": cohort / pid / "anat" / f"{pid}_FLAIR.nii.gz",
            "pet": cohort / pid / "pet" / f"{pid}_pet.nii.gz",
        }
        absent = set() if pd.isna(missing) else set(missing.split(";"))
        for modality, path in files.items():
            assert path.is_file() == (modality not in absent), path
            if path.is_file():
                img = nib.load(path)
                shapes.add(img.shape)
                assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
                assert np.allclose(np.diag(img.affine)[:3], RES)
                assert img.get_data_dtype() == (np.float32 if modality == "pet" else np.int16)
        masks = [deriv / pid / f"{pid}_desc-{d}_mask.nii.gz" for d in ("lesion", "focal", "brain")]
        assert all(m.is_file() for m in masks) == (group == "patient")
    assert len(shapes) == 1
    assert not list(cohort.parent.glob(".*tmp*"))  # temporary folder renamed away


def test_participants_table(cohort):
    table = pd.read_csv(cohort / "participants.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert list(table.columns) == ["participant_id", "group", "age", "sex", "crs"]
    assert table["participant_id"].tolist() == [
        *(f"sub-hc{i:03d}" for i in range(1, N_HEALTHY + 1)),
        *(f"sub-pt{i:03d}" for i in range(1, N_PATIENTS + 1)),
    ]
    assert set(table["sex"]) <= {"M", "F"}
    assert table["age"].astype(int).between(20, 85).all()
    controls = table[table["group"] == "control"]
    patients = table[table["group"] == "patient"]
    assert (controls["crs"] == "n/a").all()
    crs = patients["crs"].astype(int)
    # Deliberate range check: 0..23 is the label contract of participants.tsv (not a model output).
    assert crs.between(0, 23).all()


def test_ground_truth_tables(cohort):
    truth = _truth(cohort)
    for column in ("participant_id", "group", "crs_true", "crs", "global_metabolism",
                   "missing_modalities", "distractor_1_region", "pet_scale"):
        assert column in truth
    assert all(f"damage_{fam}" in truth for fam in CAUSAL_FAMILIES)
    patients = truth[truth["group"] == "patient"]
    controls = truth[truth["group"] == "control"]
    assert patients["global_metabolism"].between(0.35, 1.0).all()
    assert (controls["global_metabolism"] == 1.0).all() and controls["crs_true"].isna().all()
    # The observed score is the true one plus label noise.
    assert (patients["crs"] - patients["crs_true"]).abs().max() < 6
    # Exactly round(0.25 * 4) = 1 patient misses one modality, never all of them.
    assert patients["missing_modalities"].notna().sum() == 1
    assert controls["missing_modalities"].isna().all()
    causal = json.loads((cohort / "derivatives" / "simulation" / "causal_regions.json").read_text())
    assert causal["atlas"] == "neuromorphometrics"
    assert set(causal["regions"]) == {r for regions in CAUSAL_FAMILIES.values() for r in regions}
    atlas_names = set(Atlas.load("neuromorphometrics").labels["name"])
    assert set(causal["regions"]) <= atlas_names
    # Distractors avoid the cerebellum and brainstem (the PET reference regions).
    assert not any("Cerebell" in r or "Brain_Stem" in r for r in DISTRACTOR_REGIONS)
    # The image-free label simulator agrees with the cohort.
    quick = simulate_labels(N_PATIENTS, seed=SEED)
    assert np.allclose(quick["crs_true"], patients["crs_true"])
    assert quick["crs"].tolist() == patients["crs"].astype(int).tolist()


def test_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(AnomalyInputError, match="not empty"):
        simulate_cohort(tmp_path, n_healthy=1, n_patients=0, resolution=RES, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_an_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    import anomaly.simulate.writer as writer

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(writer, "write_tables", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        simulate_cohort(tmp_path / "out", n_healthy=1, n_patients=0, resolution=RES, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"resolution": 2.5}, "resolution"),
        ({"modalities": ("T1w", "DWI")}, "modalities"),
        ({"n_healthy": 0, "n_patients": 0}, "at least one"),
        ({"n_jobs": 0}, "n_jobs"),
        ({"missing_fraction": 1.5}, "missing_fraction"),
        ({"modalities": ("T1w", "pet"), "missing_modalities": ("FLAIR",)}, "missing_modalities"),
        ({"seed": -1}, "seed"),
    ],
)
def test_rejects_bad_parameters(tmp_path, kwargs, match):
    with pytest.raises(AnomalyInputError, match=match):
        simulate_cohort(tmp_path / "out", **{"resolution": RES, "progress": False, **kwargs})
    assert not (tmp_path / "out").exists()


def test_crs_sd_column_and_single_modality(tmp_path):
    out = simulate_cohort(
        tmp_path / "d", n_healthy=1, n_patients=1, resolution=RES, seed=1, modalities=("pet",),
        missing_fraction=1.0, write_crs_sd=True, progress=False,
    )
    table = pd.read_csv(out / "participants.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert table["crs_sd"].tolist() == ["n/a", "1.5"]
    # With one modality nothing can be missing.
    assert (out / "sub-pt001" / "pet" / "sub-pt001_pet.nii.gz").is_file()
    assert not (out / "sub-pt001" / "anat").exists()


# -------------------------------------------------------------- determinism


def test_same_seed_same_arrays_and_worker_count_does_not_matter(tmp_path, cohort):
    a = simulate_subject(3, group="patient", resolution=RES)
    b = simulate_subject(3, group="patient", resolution=RES)
    c = simulate_subject(4, group="patient", resolution=RES)
    for modality in a.images:
        assert a.images[modality].tobytes() == b.images[modality].tobytes()
        assert not np.array_equal(a.images[modality], c.images[modality])
    assert np.array_equal(a.focal_mask, b.focal_mask)

    # Two workers write the same bytes as the serial cohort (fixture, 1 worker).
    out = simulate_cohort(tmp_path / "par", n_healthy=1, n_patients=2, seed=SEED, resolution=RES,
                          missing_fraction=0.0, n_jobs=2, progress=False)
    for pid, folder, modality in (("sub-hc001", "anat", "T1w"), ("sub-pt002", "pet", "pet")):
        name = f"{pid}/{folder}/{pid}_{modality}.nii.gz"
        assert np.asarray(nib.load(out / name).dataobj).tobytes() == \
            np.asarray(nib.load(cohort / name).dataobj).tobytes()
    # A cohort subject is simulate_subject with its spawned seed.
    seed = np.random.SeedSequence(SEED, spawn_key=(1, 1))  # patient index 1 = pt002
    again = simulate_subject(seed, group="patient", resolution=RES)
    written = nib.load(out / "sub-pt002/pet/sub-pt002_pet.nii.gz").get_fdata(dtype=np.float32)
    assert np.array_equal(again.images["pet"], written)


def test_fewer_modalities_leave_the_others_unchanged():
    full = simulate_subject(5, resolution=RES)
    pet_only = simulate_subject(5, resolution=RES, modalities=("pet",))
    assert np.array_equal(full.images["pet"], pet_only.images["pet"])


# ------------------------------------------------------------- ground truth


@pytest.fixture(scope="module")
def thalamic_patient():
    return simulate_subject(
        11, group="patient", resolution=RES, global_metabolism=0.6,
        damage={"thalamus": 0.9, "brainstem": 0.3},
        distractors=[("Left_MTG_middle_temporal_gyrus", 0.8)],
        return_twins=True,
    )


def test_lesions_are_where_the_truth_says(thalamic_patient, labels):
    p = thalamic_patient
    focal = p.focal_mask
    assert focal.sum() > 10 and (p.lesion_mask >= focal).all()
    # PET is lower inside the focal mask than in the same subject without focal damage.
    pet, twin = p.images["pet"], p.twins["global"]["pet"]
    assert pet[focal].mean() < 0.85 * twin[focal].mean()
    outside = (twin > 0.3 * twin.max()) & ~ndimage.binary_dilation(focal, iterations=2)
    assert abs(pet[outside].mean() / twin[outside].mean() - 1) < 0.02
    # FLAIR is brighter and T1w darker in the structural lesions.
    flair, t1 = p.images["FLAIR"], p.images["T1w"]
    lesion = (flair - p.twins["healthy"]["FLAIR"]) > 0.2 * np.percentile(flair, 99)
    assert lesion.sum() > 3
    assert t1[lesion].mean() < p.twins["healthy"]["T1w"][lesion].mean()
    # The focal mask lies in (a neighbourhood of) the damaged regions.
    damaged = _region_mask(labels, [*CAUSAL_FAMILIES["thalamus"], *CAUSAL_FAMILIES["brainstem"],
                                    "Left_MTG_middle_temporal_gyrus"])
    near = ndimage.binary_dilation(damaged, iterations=3)  # PET blur + deformation, 12 mm
    assert focal[near].sum() / focal.sum() > 0.95
    assert {les["region"] for les in p.lesions} >= {"Left_MTG_middle_temporal_gyrus"}
    assert any("Thalamus" in les["region"] for les in p.lesions)
    assert not any(les["region"] == "Brain_Stem" for les in p.lesions)  # 0.3 < threshold


def test_global_hypometabolism_spares_the_cerebellum(thalamic_patient, labels):
    p = thalamic_patient
    pet, healthy = p.images["pet"], p.twins["healthy"]["pet"]
    away = ~ndimage.binary_dilation(p.focal_mask, iterations=2)
    cerebellum = _region_mask(labels, CEREBELLUM) & away
    cortex = (labels >= 100) & (healthy > 0.5 * healthy.max()) & away
    assert abs(pet[cerebellum].mean() / healthy[cerebellum].mean() - 1) < 0.05
    ratio = pet[cortex].mean() / healthy[cortex].mean()
    assert 0.55 < ratio < 0.7  # g = 0.6, blurred with white matter and cerebellum


def test_cohort_pet_cerebellum_matches_controls_after_scale(cohort, labels):
    truth = _truth(cohort).set_index("participant_id")
    cerebellum = ndimage.binary_erosion(_region_mask(labels, CEREBELLUM), iterations=1)
    means = {}
    for pid in truth.index:
        path = cohort / pid / "pet" / f"{pid}_pet.nii.gz"
        if path.is_file():
            means[pid] = nib.load(path).get_fdata()[cerebellum].mean() / truth.loc[pid, "pet_scale"]
    controls = [v for k, v in means.items() if "hc" in k]
    patients = [v for k, v in means.items() if "pt" in k]
    assert abs(np.mean(patients) / np.mean(controls) - 1) < 0.08


def test_control_has_no_damage_and_no_masks():
    control = simulate_subject(2, resolution=RES, modalities=("T1w",))
    assert control.crs is None and control.lesion_mask is None and control.brain_mask is None
    assert not control.lesions
    assert control.global_metabolism == 1.0
    with pytest.raises(AnomalyInputError, match="patient"):
        simulate_subject(2, resolution=RES, damage={"thalamus": 0.5})


# ------------------------------------------------------------------- CRS-R


def test_crs_is_monotone_in_damage():
    model = CRSModel()
    assert model(1.0, {}) == pytest.approx(23.0)
    base = {"brainstem": 0.2, "thalamus": 0.2, "posteromedial": 0.2, "frontal": 0.2}
    for family in CAUSAL_FAMILIES:
        worse = {**base, family: 0.8}
        assert model(0.7, worse) < model(0.7, base)
    assert model(0.5, base) < model(0.8, base)
    assert model(0.3, {"brainstem": 1.0}) >= 0.0
    # The same person with more damage scores lower (same anatomy and noise).
    mild = simulate_subject(9, group="patient", resolution=RES, modalities=("pet",),
                            global_metabolism=0.8, damage={"thalamus": 0.2}, masks=False)
    severe = simulate_subject(9, group="patient", resolution=RES, modalities=("pet",),
                              global_metabolism=0.8, damage={"thalamus": 0.8}, masks=False)
    assert severe.crs_true < mild.crs_true
    assert severe.age == mild.age and severe.sex == mild.sex


def test_crs_is_skewed_low():
    table = simulate_labels(400, seed=0)
    crs = table["crs"].astype(int)
    assert crs.between(0, 23).all()
    assert 0.5 < (crs < 8).mean() < 0.75  # most patients UWS-like
    assert table["crs_true"].max() > 14  # but some MCS patients too
    # The noise has the requested SD.
    assert abs((table["crs"] - table["crs_true"]).std() - 1.5) < 0.3
    noiseless = simulate_labels(50, seed=0, label_noise_sd=0.0)
    assert (noiseless["crs"] == noiseless["crs_true"].round()).all()


def test_config_is_exposed_and_used():
    cfg = SimulationConfig(pet_fwhm_mm=12.0)
    sharp = simulate_subject(1, resolution=RES, modalities=("pet",))
    blurred = simulate_subject(1, resolution=RES, modalities=("pet",), config=cfg)
    grad = lambda a: np.abs(np.diff(a, axis=0)).mean()  # noqa: E731
    assert grad(blurred.images["pet"]) < grad(sharp.images["pet"])
    assert cfg.to_dict()["crs"]["metabolism_floor"] == 0.38


# ------------------------------------------------------------- realistic variation, sites
def test_default_variation_is_the_default_config_and_names_are_checked():
    from anomaly.simulate import simulation_config

    assert simulation_config() == SimulationConfig()
    realistic = simulation_config("realistic", site="b")
    assert (realistic.variation, realistic.site) == ("realistic", "b")
    assert realistic.fine_displacement_mm > 0 and realistic.pet_fwhm_range == (6.5, 9.0)
    for kwargs in ({"variation": "wild"}, {"site": "z"}, {"no_such_field": 1}):
        with pytest.raises(AnomalyInputError):
            simulation_config(**kwargs)


def test_sites_differ_in_pet_smoothness_and_realistic_anatomy_varies_more():
    from anomaly.simulate import simulation_config

    def pet(site):  # noise-free PET, so that only the point-spread function differs
        cfg = simulation_config("realistic", site=site, pet_noise=0.0)
        return simulate_subject(2, resolution=RES, modalities=("pet",), config=cfg).images["pet"]

    grad = lambda a: np.abs(np.diff(a, axis=0)).mean() / a[a > 0].mean()  # noqa: E731
    assert grad(pet("b")) < 0.9 * grad(pet("a"))  # site b: 6.5-9 mm FWHM, site a: 4-6.5 mm
    # Two controls differ more under realistic variation (3-8 mm warps, thickness, atrophy rate).
    def spread(cfg):
        a, b = (simulate_subject(s, resolution=RES, modalities=("T1w",), config=cfg, age=60, sex="F")
                .images["T1w"] for s in (3, 4))
        return np.abs(a / a.mean() - b / b.mean()).mean()

    assert spread(simulation_config("realistic")) > 1.2 * spread(SimulationConfig())


def test_t2w_and_adc_show_lesions_in_their_directions():
    from anomaly.simulate import ALL_MODALITIES

    patient = simulate_subject(SEED, group="patient", resolution=RES, modalities=ALL_MODALITIES,
                               damage={"thalamus": 1.0}, distractors=[], return_twins=True)
    inside = patient.focal_mask
    assert inside.any()
    for modality, sign in (("T2w", 1), ("ADC", -1), ("T1w", -1), ("FLAIR", 1)):
        change = patient.images[modality][inside].mean() - patient.twins["healthy"][modality][inside].mean()
        assert np.sign(change) == sign, modality
    # Adding modalities leaves the default ones unchanged (own random streams).
    plain = simulate_subject(SEED, group="patient", resolution=RES, damage={"thalamus": 1.0}, distractors=[])
    np.testing.assert_array_equal(plain.images["pet"], patient.images["pet"])


def test_simulate_command_takes_variation_site_and_modalities(tmp_path):
    from anomaly.cli import main

    out = tmp_path / "bids"
    argv = ["simulate", str(out), "--healthy", "1", "--patients", "0", "--resolution", "6", "--quiet",
            "--variation", "realistic", "--site", "b", "--modalities", "T1w", "ADC"]
    assert main(argv) == 0
    config = json.loads((out / "derivatives" / "simulation" / "simulation.json").read_text())["config"]
    assert (config["variation"], config["site"], config["pet_fwhm_range"]) == ("realistic", "b", [6.5, 9.0])
    assert sorted(p.name for p in (out / "sub-hc001" / "anat").iterdir()) == [
        "sub-hc001_ADC.nii.gz", "sub-hc001_T1w.nii.gz"]


def test_missing_modalities_choose_what_is_missing_not_who():
    from anomaly.simulate.cohort import _plan

    mods = ("T1w", "FLAIR", "pet")
    default = _plan(0, 40, 5, mods, 0.15, False)
    assert default == _plan(0, 40, 5, mods, 0.15, False, mods)  # the default is "any written one"
    pet_only = _plan(0, 40, 5, mods, 0.15, False, ("pet",))
    assert [t.label for t in pet_only if t.missing] == [t.label for t in default if t.missing]
    assert sum(bool(t.missing) for t in pet_only) == 6
    assert {t.missing for t in pet_only if t.missing} == {("pet",)}
    assert len({t.missing for t in default if t.missing}) > 1  # the default draws among all three


def test_simulate_command_writes_patients_without_pet(tmp_path):
    from anomaly.cli import main

    out = tmp_path / "bids"
    argv = ["simulate", str(out), "--healthy", "1", "--patients", "2", "--resolution", "6", "--quiet",
            "--modalities", "T1w", "pet", "--missing-modalities", "pet", "--missing-fraction", "0.5"]
    assert main(argv) == 0
    record = json.loads((out / "derivatives" / "simulation" / "simulation.json").read_text())
    assert record["missing_modalities"] == ["pet"]
    has_pet = [(out / f"sub-{s}" / "pet").is_dir() for s in ("pt001", "pt002", "hc001")]
    assert sorted(has_pet[:2]) == [False, True] and has_pet[2]
    assert all((out / f"sub-{s}" / "anat" / f"sub-{s}_T1w.nii.gz").is_file() for s in ("pt001", "pt002"))
