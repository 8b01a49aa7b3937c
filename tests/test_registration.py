"""Registration building blocks: multi-frame PET, 4D refusal, ANTs round trips on tiny images."""

import json

import nibabel as nib
import numpy as np
import pytest

from anomaly.cli import main
from anomaly.io import AnomalyInputError, load_image
from anomaly.io.images import frame_weights


def _frames(rng, path, n_frames=3, sidecar=None):
    data = rng.uniform(1.0, 5.0, (14, 15, 13, n_frames)).astype(np.float32)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-26, -30, -24]
    nib.save(nib.Nifti1Image(data, affine), path)
    if sidecar is not None:
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar))
    return data


def test_multiframe_pet_is_the_duration_weighted_mean(rng, tmp_path):
    path = tmp_path / "sub-01_trc-FDG_pet.nii.gz"
    data = _frames(rng, path, sidecar={"FrameDuration": [60, 120, 300], "TracerName": "FDG"})
    img = load_image(path, check_mni=False, average_frames=True)
    expected = (data * np.array([60, 120, 300]) / 480.0).sum(axis=-1)
    assert img.shape == expected.shape
    np.testing.assert_allclose(img.get_fdata(), expected, rtol=1e-5)
    # Not the plain mean: the durations matter.
    assert np.abs(img.get_fdata() - data.mean(axis=-1)).max() > 0.1


def test_multiframe_pet_without_durations_is_the_plain_mean(rng, tmp_path):
    path = tmp_path / "sub-01_pet.nii.gz"
    data = _frames(rng, path, n_frames=4)
    img = load_image(path, check_mni=False, average_frames=True)
    np.testing.assert_allclose(img.get_fdata(), data.mean(axis=-1), rtol=1e-5)


@pytest.mark.parametrize("durations", [[60, 120], [60, -1, 300], ["a", 1, 2]])
def test_bad_frame_durations_are_refused(rng, tmp_path, durations):
    path = tmp_path / "sub-01_pet.nii.gz"
    _frames(rng, path, sidecar={"FrameDuration": durations})
    with pytest.raises(AnomalyInputError, match="FrameDuration must list one positive duration per frame"):
        frame_weights(nib.load(path), str(path))


def test_4d_image_that_is_not_pet_is_refused_with_one_line(rng, tmp_path, capsys):
    bids = tmp_path / "bids"
    (bids / "sub-01" / "anat").mkdir(parents=True)
    (bids / "participants.tsv").write_text("participant_id\tgroup\tage\tsex\tcrs\nsub-01\tpatient\t40\tF\t5\n")
    _frames(rng, bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz", n_frames=3)
    status = main(["prepare", str(bids), "--out", str(tmp_path / "prep")])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1 and "4D with 3 volumes; expected a 3D volume" in err
    assert "sub-01_T1w.nii.gz" in err
    assert not list((tmp_path / "prep").glob("sub-01/*/*.nii.gz"))


def test_coregister_recovers_a_known_rigid_motion(tmp_path):
    """A PET-like copy of the template, moved by 8 degrees and 10 mm, comes back within a voxel."""
    from anomaly.preprocess import resample_to_grid
    from anomaly.registration.register import apply_transforms, coregister
    from anomaly.registration.template import target_images

    grid, template, mask = target_images(4.0)
    angle = np.deg2rad(8.0)
    motion = np.eye(4)
    motion[:3, :3] = [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    motion[:3, 3] = [10.0, -6.0, 4.0]
    # Same voxels, moved world coordinates; "PET" contrast: smoothed and inverted-ish.
    pet_like = np.asarray(template.dataobj) ** 0.5
    moved = nib.Nifti1Image(pet_like.astype(np.float32), motion @ template.affine)
    matrix = coregister(moved, template, tmp_path / "pet_", "pet")
    back = apply_transforms(moved, template, [matrix])
    brain = np.asarray(mask.dataobj) > 0
    before = resample_to_grid(moved, grid)  # the moved image taken as it is
    corr_after = np.corrcoef(np.asarray(back.dataobj)[brain], pet_like[brain])[0, 1]
    corr_before = np.corrcoef(before[brain], pet_like[brain])[0, 1]
    assert corr_after > 0.97 > corr_before
