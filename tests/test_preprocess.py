"""Tests of the model grid, resampling, intensity normalisation and subject preprocessing."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest

from anomaly.io import AnomalyInputError
from anomaly.preprocess import (
    Grid,
    Preprocessed,
    make_grid,
    normalise_mri,
    normalise_pet,
    preprocess_subject,
    resample_to_grid,
    template_images,
)

SHAPE = (9, 11, 7)
MNI_AFFINE = np.array(
    [[20.0, 0, 0, -90], [0, 20.0, 0, -126], [0, 0, 20.0, -72], [0, 0, 0, 1]]
)
# A small, coarse grid for resampling tests (no template needed).
SMALL = Grid((12, 14, 10), np.array(
    [[10.0, 0, 0, -60], [0, 10.0, 0, -80], [0, 0, 10.0, -40], [0, 0, 0, 1]]
), 10.0)


def smooth_image(rng, shape=SHAPE, affine=MNI_AFFINE) -> nib.Nifti1Image:
    """Smooth positive data: interpolation differences are then meaningful."""
    ijk = np.indices(shape).reshape(3, -1).T
    xyz = nib.affines.apply_affine(affine, ijk)
    centre = rng.uniform(-20, 20, 3)
    values = 1.0 + np.exp(-((xyz - centre) ** 2).sum(axis=1) / (2 * 50.0**2))
    return nib.Nifti1Image(values.reshape(shape).astype(np.float32), affine)


def world_of(grid: Grid) -> np.ndarray:
    ijk = np.indices(grid.shape).reshape(3, -1).T
    return nib.affines.apply_affine(grid.affine, ijk).reshape(*grid.shape, 3)


# ------------------------------------------------------------------------ grid


@pytest.mark.parametrize("resolution", [2.0, 3, 4.0, 2.5])
def test_make_grid(resolution):
    grid = make_grid(resolution)
    assert all(s % 8 == 0 for s in grid.shape)
    assert grid.resolution == float(resolution)
    np.testing.assert_allclose(np.diag(grid.affine)[:3], resolution)
    # MNI origin is a voxel centre, and the grid covers the brain with a margin.
    origin = np.linalg.solve(grid.affine, [0, 0, 0, 1])[:3]
    np.testing.assert_allclose(origin, np.round(origin), atol=1e-9)
    lo = grid.affine[:3, 3]
    hi = lo + (np.array(grid.shape) - 1) * resolution
    assert np.all(lo <= [-72 - resolution, -107 - resolution, -72 - resolution])
    assert np.all(hi >= [72 + resolution, 73 + resolution, 82 + resolution])
    assert make_grid(resolution) is grid  # cached


@pytest.mark.parametrize("resolution", [2.0, 3.0, 4.0])
def test_make_grid_shape_follows_the_mni_bounding_box(resolution):
    """The shape derived from nilearn's 1 mm MNI152 brain mask and make_grid's documented
    rule: voxel centres on multiples of the resolution, the brain's bounding box plus two
    voxels, each side padded up to a multiple of 8."""
    from nilearn.datasets import load_mni152_brain_mask

    mask = load_mni152_brain_mask(resolution=1)
    ijk = np.argwhere(np.asarray(mask.dataobj) > 0)
    corners = nib.affines.apply_affine(mask.affine, np.stack([ijk.min(0), ijk.max(0)]))
    lo_mm, hi_mm = corners.min(0), corners.max(0)
    first = np.floor(lo_mm / resolution - 2)  # voxel index (in steps from the origin) of each side
    last = np.ceil(hi_mm / resolution + 2)
    unpadded = (last - first + 1).astype(int)
    assert make_grid(resolution, multiple=1).shape == tuple(unpadded)
    assert make_grid(resolution).shape == tuple(int(-(-n // 8) * 8) for n in unpadded)
    # make_grid's docstring example for the default 2 mm grid.
    if resolution == 2.0:
        assert make_grid(2.0).shape == (80, 96, 88)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"resolution": 0.5}, "resolution: expected a voxel size >= 1 mm"),
        ({"resolution": float("nan")}, "resolution"),
        ({"resolution": "fine"}, "resolution: expected a number"),
        ({"multiple": 0}, "multiple: expected a positive integer"),
        ({"multiple": 2.5}, "multiple"),
    ],
)
def test_make_grid_refuses(kwargs, problem):
    with pytest.raises(AnomalyInputError, match=problem):
        make_grid(**kwargs)


def test_grid_equality_hash_and_images(rng):
    a = Grid((12, 14, 10), SMALL.affine.copy(), 10)
    assert a == SMALL and hash(a) == hash(SMALL) and len({a, SMALL}) == 1
    assert a != Grid((12, 14, 11), SMALL.affine, 10.0)
    with pytest.raises(ValueError):
        a.affine[0, 0] = 1.0  # read-only: grids are shared through caches
    assert Grid.from_dict(a.to_dict()) == a
    img = a.to_image(rng.random(a.shape).astype(np.float32))
    assert img.shape == a.shape and np.allclose(img.affine, a.affine)
    assert a.to_image(np.zeros(a.shape, bool)).get_data_dtype() == np.uint8
    with pytest.raises(AnomalyInputError, match="does not match the grid shape"):
        a.to_image(np.zeros((3, 3, 3)))


def test_template_images():
    grid = make_grid(4.0)
    templates = template_images(grid)
    assert set(templates) == {"t1", "gm", "wm", "mask"}
    for array in templates.values():
        assert array.shape == grid.shape and array.dtype == np.float32
        assert not array.flags.writeable
        assert 0.0 <= array.min() and array.max() <= 1.0
    mask = templates["mask"]
    assert set(np.unique(mask)) == {0.0, 1.0}
    volume_litres = mask.sum() * grid.resolution**3 / 1e6
    assert 1.2 < volume_litres < 2.2
    # Grey and white matter sit in the brain mask.
    assert templates["gm"][mask == 0].mean() < 0.05 < templates["gm"][mask == 1].mean()
    assert template_images(grid)["t1"] is templates["t1"]  # cached


# ------------------------------------------------------------------ resampling


def test_resample_orientation_invariance(rng):
    img = smooth_image(rng)
    data = np.asarray(img.dataobj)
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = SHAPE[0] - 1
    las = nib.Nifti1Image(data[::-1].copy(), MNI_AFFINE @ flip)
    assert nib.aff2axcodes(las.affine) == ("L", "A", "S")
    # A permuted twin (voxel axes z, x, y) describes the same image too.
    perm = np.zeros((4, 4))
    perm[[0, 1, 2], [1, 2, 0]] = 1.0
    perm[3, 3] = 1.0
    pil = nib.Nifti1Image(np.transpose(data, (2, 0, 1)).copy(), MNI_AFFINE @ perm)
    for interpolation in ("continuous", "linear", "nearest"):
        reference = resample_to_grid(img, SMALL, interpolation)
        assert reference.dtype == np.float32 and reference.shape == SMALL.shape
        assert reference.max() > 1.5
        for twin in (las, pil):
            np.testing.assert_allclose(
                resample_to_grid(twin, SMALL, interpolation), reference, atol=1e-4
            )


def test_resample_anisotropic_linear_is_exact(rng):
    # Trilinear interpolation reproduces a linear function exactly, so any voxel
    # size and orientation error would show.
    affine = np.array(
        [[-15.0, 0, 0, 80], [0, 0, 12.0, -110], [0, 25.0, 0, -60], [0, 0, 0, 1]]
    )
    shape = (11, 13, 6)
    coef = rng.uniform(-1, 1, 3)
    xyz = nib.affines.apply_affine(affine, np.indices(shape).reshape(3, -1).T)
    values = (100.0 + xyz @ coef).reshape(shape).astype(np.float32)
    out = resample_to_grid(nib.Nifti1Image(values, affine), SMALL, "linear")
    world = world_of(SMALL)
    # Voxel coordinates of the grid in the image: inside means interpolated.
    vox = nib.affines.apply_affine(np.linalg.inv(affine), world)
    inside = np.all((vox >= 0) & (vox <= np.array(shape) - 1), axis=-1)
    outside = np.any((vox < -0.5) | (vox > np.array(shape) - 0.5), axis=-1)
    assert inside.sum() > 100 and outside.sum() > 100
    np.testing.assert_allclose(out[inside], 100.0 + world[inside] @ coef, atol=1e-3)
    assert np.all(out[outside] == 0.0)


def test_resample_identity_and_nearest_labels(rng):
    data = rng.uniform(1, 2, SMALL.shape).astype(np.float32)
    img = SMALL.to_image(data)
    np.testing.assert_allclose(resample_to_grid(img, SMALL), data, atol=1e-4)
    labels = rng.integers(0, 5, SHAPE).astype(np.int16)
    out = resample_to_grid(nib.Nifti1Image(labels, MNI_AFFINE), SMALL, "nearest")
    assert set(np.unique(out)) <= set(range(5))
    mask = nib.Nifti1Image((labels > 2).astype(np.uint8), MNI_AFFINE)
    assert set(np.unique(resample_to_grid(mask, SMALL, "nearest"))) == {0.0, 1.0}


def test_resample_from_path_and_bad_interpolation(tmp_path, rng):
    path = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(smooth_image(rng), path)
    assert resample_to_grid(path, SMALL).shape == SMALL.shape
    empty = tmp_path / "sub-01_desc-focal_mask.nii.gz"  # masks may be empty
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), MNI_AFFINE), empty)
    assert not resample_to_grid(empty, SMALL, "nearest").any()
    with pytest.raises(AnomalyInputError, match="missing.nii.gz: file not found"):
        resample_to_grid(tmp_path / "missing.nii.gz", SMALL)
    with pytest.raises(AnomalyInputError, match="interpolation: expected one of"):
        resample_to_grid(path, SMALL, "cubic")


# --------------------------------------------------------------- normalisation


def test_normalise_mri_numbers():
    data = np.array([[[0.0, 1.0, 2.0, 3.0, 4.0, 100.0, 7.0, 0.0]]], dtype=np.float32)
    mask = np.array([[[1, 1, 1, 1, 1, 1, 0, 1]]], dtype=bool)
    out, info = normalise_mri(data, mask)
    # Brain voxels with signal: 1, 2, 3, 4, 100 (0 = not covered).
    values = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    scale = (q75 - q25) / 1.349
    assert info == {"median": 3.0, "scale": pytest.approx(2.0 / 1.349), "n_voxels": 5}
    expected = np.zeros_like(data)
    expected[0, 0, 1:6] = (values - median) / scale
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out.dtype == np.float32 and out[0, 0, 6] == 0.0  # outside the mask


def test_normalise_mri_refuses_flat_data():
    problem = "scan.nii: intensities inside the brain have no spread"
    with pytest.raises(AnomalyInputError, match=problem):
        normalise_mri(np.ones((2, 3, 4)), np.ones((2, 3, 4), bool), name="scan.nii")
    with pytest.raises(AnomalyInputError, match="brain_mask: shape"):
        normalise_mri(np.ones((2, 3, 4)), np.ones((2, 3, 5), bool))


def test_normalise_pet_numbers():
    data = np.arange(1, 25, dtype=np.float32).reshape(2, 3, 4)
    brain = np.ones(data.shape, bool)
    brain[0, 0, 0] = False
    reference = np.zeros(data.shape, bool)
    reference[1, 2, :] = True  # values 21, 22, 23, 24 -> mean 22.5
    reference[0, 0, 0] = True  # outside the brain: ignored
    out, info = normalise_pet(data, brain, reference)
    assert info == {"reference_value": 22.5, "reference_voxels": 4}
    expected = np.where(brain, data / 22.5, 0.0)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    out, info = normalise_pet(data, brain)  # global: mean of 2..24 = 13
    assert info == {"reference_value": 13.0, "reference_voxels": 23}
    np.testing.assert_allclose(out[brain].mean(), 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    ("data", "reference", "problem"),
    [
        (np.ones((2, 3, 4)), np.zeros((2, 3, 4), bool), "covers no voxel of the PET reference"),
        (-np.ones((2, 3, 4)), None, "mean uptake in the brain is -1"),
    ],
)
def test_normalise_pet_refuses(data, reference, problem):
    with pytest.raises(AnomalyInputError) as excinfo:
        normalise_pet(data, np.ones((2, 3, 4), bool), reference, name="sub-01_pet.nii.gz")
    assert "sub-01_pet.nii.gz" in str(excinfo.value) and problem in str(excinfo.value)


# ------------------------------------------------------------------- subjects


@pytest.fixture(scope="module")
def grid() -> Grid:
    return make_grid(4.0)


def test_preprocess_subject(grid, rng, tmp_path):
    t1 = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(smooth_image(rng), t1)
    pet = smooth_image(rng)
    world = world_of(grid)
    cerebellum = (world[..., 2] < -20) & (world[..., 1] < -50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the coarse test images cover ~85% of the brain
        result = preprocess_subject(
            {"T1w": t1, "pet": pet},
            grid,
            ["T1w", "FLAIR", "pet"],
            reference_masks={"cerebellum": cerebellum},
        )
    assert isinstance(result, Preprocessed)
    assert result.data.shape == (3, *grid.shape) and result.data.dtype == np.float32
    assert result.present.tolist() == [True, False, True]
    assert result.modalities == ["T1w", "FLAIR", "pet"]
    assert not result.data[1].any() and not result.valid[1].any()
    brain = template_images(grid)["mask"] > 0
    assert not result.data[:, ~brain].any()
    assert set(result.qc) == {"T1w", "pet"}
    assert result.qc["T1w"]["source"] == str(t1)
    assert 0.5 < result.qc["T1w"]["coverage"] <= 1.0
    # MRI: robust z has median 0 over covered brain voxels.
    assert abs(np.median(result.data[0][result.valid[0]])) < 1e-5
    # PET: SUVR is 1 on average in the reference region.
    qc = result.qc["pet"]
    assert qc["reference"] == "cerebellum"
    assert qc["reference_voxels"] == (cerebellum & result.valid[2]).sum() > 0
    np.testing.assert_allclose(result.data[2][cerebellum & result.valid[2]].mean(), 1.0, rtol=1e-5)


def test_preprocess_subject_global_reference_and_coverage(grid, rng):
    img = smooth_image(rng)
    data = np.asarray(img.dataobj).copy()
    data[: SHAPE[0] // 2 + 1] = 0.0  # only the right hemisphere and a bit
    half = nib.Nifti1Image(data, MNI_AFFINE)
    with pytest.warns(UserWarning, match="covers only"):
        result = preprocess_subject({"pet": half}, grid, ["pet"], pet_reference="global")
    assert 0.2 < result.qc["pet"]["coverage"] < 0.6
    np.testing.assert_allclose(result.data[0][result.valid[0]].mean(), 1.0, rtol=1e-5)


def test_preprocess_subject_warns_on_ignored_modality(grid, rng):
    with pytest.warns(UserWarning, match="ignoring image.*FLAIR"):
        result = preprocess_subject(
            {"T1w": smooth_image(rng), "FLAIR": smooth_image(rng)}, grid, ["T1w"]
        )
    assert result.present.tolist() == [True]


@pytest.mark.parametrize(
    ("images", "kwargs", "problem"),
    [
        ({"FLAIR": "x.nii.gz"}, {}, "images: none of the model's modalities (T1w, pet) was given"),
        ({"pet": "img"}, {}, "pet_reference: no mask given for 'cerebellum'"),
        ({"pet": "img"}, {"reference_masks": {"cerebellum": np.ones((2, 2, 2), bool)}},
         "reference_masks['cerebellum']: shape"),
        ({"T1w": "img"}, {"pet_reference": ""}, "pet_reference"),
    ],
)
def test_preprocess_subject_refuses(grid, rng, images, kwargs, problem):
    images = {k: smooth_image(rng) if v == "img" else v for k, v in images.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(AnomalyInputError) as excinfo:
            preprocess_subject(images, grid, ["T1w", "pet"], **kwargs)
    assert problem in str(excinfo.value)


def test_preprocess_subject_reports_bad_file(grid, tmp_path):
    with pytest.raises(AnomalyInputError) as excinfo:
        preprocess_subject({"T1w": tmp_path / "sub-01_T1w.nii.gz"}, grid, ["T1w"])
    assert "sub-01_T1w.nii.gz: file not found" in str(excinfo.value)


@pytest.mark.parametrize("order", [0, 1, 3])
def test_axis_by_axis_resampling_equals_scipy_affine_transform(rng, order):
    # The fast path for axis-aligned images must give scipy's values, edges included;
    # nearest neighbour must pick the very same voxels, ties at half voxels included.
    from anomaly.preprocess.grid import _affine_resample, _separable_resample

    for i in range(20):
        data = rng.normal(size=tuple(rng.integers(5, 25, 3))).astype(np.float32)
        matrix = np.eye(4)
        matrix[:3, :3] = np.diag(rng.uniform(0.3, 2.5, 3) * rng.choice([-1, 1], 3))
        matrix[:3, 3] = rng.uniform(-5, 30, 3)
        if i % 2:  # scanner-like voxel sizes (1.5 mm onto 2 mm...), whole and half-voxel offsets
            matrix[:3, :3] = np.diag(rng.choice([0.5, 2 / 3, 0.75, 4 / 3, 1.5, 2.0], 3))
            matrix[:3, 3] = np.round(rng.uniform(-5, 10, 3) * 2) / 2
        shape = tuple(int(v) for v in rng.integers(4, 30, 3))
        fast, scipy = _separable_resample(data, matrix, shape, order), _affine_resample(data, matrix, shape, order)
        assert fast.dtype == np.float32 and fast.shape == shape
        if order == 0:
            np.testing.assert_array_equal(fast, scipy)
        else:
            np.testing.assert_allclose(fast, scipy, atol=2e-6)


def test_nearest_resampling_of_an_integer_mask_equals_its_float_copy(grid, rng):
    # Masks are resampled as 1-byte arrays (faster): the same float32 result as their float copy.
    affine = np.diag([-1.5, 1.5, 1.5, 1.0])
    affine[:3, 3] = [90.0, -126.0, -72.0]
    mask = (rng.random((120, 146, 122)) > 0.4).astype(np.uint8)
    as_bytes = resample_to_grid(nib.Nifti1Image(mask, affine), grid, "nearest")
    as_float = resample_to_grid(nib.Nifti1Image(mask.astype(np.float32), affine), grid, "nearest")
    assert as_bytes.dtype == np.float32
    np.testing.assert_array_equal(as_bytes, as_float)
    assert 0.4 < as_bytes.mean() < 0.8  # the field of view covers most of the grid
