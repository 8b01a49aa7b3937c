"""Every parametric volume a team has: discovery of dwi/perf/anat maps, lesion directions."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from anomaly.cli import main
from anomaly.constants import lesion_sign
from anomaly.io import find_subjects
from anomaly.io.bids import map_modality


def _touch_image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6), dtype=np.float32), np.eye(4)), path)


def test_discovery_finds_diffusion_perfusion_and_anatomical_maps(tmp_path):
    sub = tmp_path / "sub-01"
    names = [
        "anat/sub-01_T1w.nii.gz", "anat/sub-01_T2w.nii.gz", "anat/sub-01_FLAIR.nii.gz",
        "anat/sub-01_SWI.nii.gz", "anat/sub-01_T2starw.nii.gz", "anat/sub-01_PD.nii.gz",
        "ses-1/dwi/sub-01_ses-1_ADC.nii.gz", "dwi/sub-01_model-DTI_param-fa_dwimap.nii.gz",
        "dwi/sub-01_MD.nii.gz", "perf/sub-01_cbf.nii.gz", "pet/sub-01_trc-FDG_pet.nii.gz",
        # Not parametric maps: raw series, masks, segmentations.
        "dwi/sub-01_dwi.nii.gz", "perf/sub-01_asl.nii.gz", "anat/sub-01_space-T1w_desc-brain_mask.nii.gz",
        "anat/sub-01_dseg.nii.gz", "dwi/sub-01_T1w.nii.gz",
    ]
    for name in names:
        _touch_image(sub / name)
    with pytest.warns(UserWarning, match="no participants.tsv"):
        (subject,) = find_subjects(tmp_path)
    assert sorted(subject.images) == sorted(
        ["T1w", "T2w", "FLAIR", "SWI", "T2starw", "PD", "ADC", "FA", "MD", "cbf", "pet"])
    assert subject.images["T1w"].parent.name == "anat"  # not the stray dwi/ one
    assert subject.images["ADC"].name == "sub-01_ses-1_ADC.nii.gz"


@pytest.mark.parametrize(("name", "datatype", "expected"), [
    ("sub-01_FA.nii.gz", "dwi", "FA"), ("sub-01_FA.nii.gz", "perf", None), ("sub-01_dwi.nii", "dwi", None),
    ("sub-01_cbf.nii.gz", "perf", "cbf"), ("sub-01_FLAIR.nii.gz", "anat", "FLAIR"),
    ("sub-01_desc-lesion_mask.nii.gz", "anat", None), ("brain.nii.gz", "anat", None),
])
def test_map_modality(name, datatype, expected):
    assert map_modality(name, datatype) == expected


def test_unknown_modality_is_two_sided_unless_declared(sim_cohort, tmp_path):
    """A model on T1w + an unknown modality (FOO): a drop in FOO is abnormal by default,
    and not once the user declares that lesions raise FOO."""
    bids = tmp_path / "bids"
    for subject in find_subjects(sim_cohort, group="control")[:8]:
        anat = bids / f"sub-{subject.label}" / "anat"
        anat.mkdir(parents=True)
        shutil.copy(subject.images["T1w"], anat / f"sub-{subject.label}_T1w.nii.gz")
        shutil.copy(subject.images["FLAIR"], anat / f"sub-{subject.label}_FOO.nii.gz")
    shutil.copy(sim_cohort / "participants.tsv", bids / "participants.tsv")
    model_dir = tmp_path / "model"
    with pytest.warns(UserWarning):  # participants.tsv lists subjects left out of this copy
        status = main(["fit-normative", str(bids), "--out", str(model_dir), "--method", "zscore",
                       "--resolution", "4", "--quiet", "--lesion-direction", "FOO=higher"])
    assert status == 0
    meta = json.loads((model_dir / "metadata.json").read_text())
    assert meta["training"]["lesion_directions"] == {"FOO": "higher"}

    from anomaly.normative import NormativeModel

    model = NormativeModel.load(model_dir)
    control = find_subjects(sim_cohort, group="control")[9]  # not in the training set
    foo = nib.load(control.images["FLAIR"])
    data = np.asarray(foo.dataobj, dtype=np.float32).copy()
    centre = np.array(data.shape) // 2
    blob = np.zeros(data.shape, dtype=bool)
    blob[tuple(slice(c - 3, c + 3) for c in centre)] = True
    data[blob] *= 0.4  # a lesion that lowers FOO
    images = {"T1w": control.images["T1w"], "FOO": nib.Nifti1Image(data, foo.affine, foo.header)}
    from anomaly.preprocess import resample_to_grid

    in_blob = resample_to_grid(nib.Nifti1Image(blob.astype(np.float32), foo.affine), model.grid_) > 0.5
    in_blob &= model.mask_
    assert in_blob.sum() > 10
    declared = model.transform(images).anomaly[in_blob].mean()
    model.set_params(lesion_directions=None)  # FOO unknown: two-sided
    two_sided = model.transform(images).anomaly[in_blob].mean()
    assert lesion_sign("FOO") == 0.0
    assert two_sided > 2.0
    assert declared < 0.5 * two_sided


def test_bad_lesion_direction_is_a_usage_error(tmp_path, capsys):
    status = main(["fit-normative", str(tmp_path), "--out", str(tmp_path / "m"), "--lesion-direction", "FA=down"])
    assert status == 2
    assert "MOD=lower|higher|both" in capsys.readouterr().err


def test_a_five_volume_cohort_runs_through_fit_and_score(tmp_path):
    # T1w, T2w, FLAIR, ADC and PET: every modality gets its z map, and the two-sided ADC
    # counts in the combined map by |z|.
    bids = tmp_path / "bids"
    assert main(["simulate", str(bids), "--healthy", "6", "--patients", "2", "--resolution", "4", "--seed", "5",
                 "--missing-fraction", "0", "--modalities", "T1w", "T2w", "FLAIR", "ADC", "pet", "--quiet"]) == 0
    model = tmp_path / "model"
    # No median filter, no rim and the maximum over modalities: the voxelwise bound
    # below is that rule's, not the filters' or the PET-led default's.
    assert main(["fit-normative", str(bids), "--out", str(model), "--method", "zscore", "--resolution", "4",
                 "--median-filter", "0", "--map-rim", "0", "--modality-rule", "max", "--quiet"]) == 0
    meta = json.loads((model / "metadata.json").read_text())
    assert meta["training"]["modality_rule"] == "max"
    assert sorted(meta["modalities"]) == ["ADC", "FLAIR", "T1w", "T2w", "pet"]
    out = tmp_path / "scores"
    assert main(["score", str(bids), "--model", str(model), "--out", str(out), "--no-figures", "--quiet"]) == 0
    for folder in sorted(out.glob("sub-*")):
        if not folder.is_dir():
            continue
        label = folder.name
        z = {m: nib.load(next(folder.glob(f"{label}_*_mod-{m}_stat-z_statmap.nii.gz"))).get_fdata()
             for m in meta["modalities"]}
        anomaly = nib.load(next(folder.glob(f"{label}_*_stat-anomaly_statmap.nii.gz"))).get_fdata()
        # The combined map is at least each modality's lesion-direction part: |z| for ADC.
        assert np.all(anomaly + 1e-4 >= np.nan_to_num(np.abs(z["ADC"])))
        assert np.all(anomaly + 1e-4 >= np.nan_to_num(-z["T1w"]).clip(0))
