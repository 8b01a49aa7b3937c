"""Images as scoring reads and writes them: read once into a private array; maps written
with a faster gzip, the same NIfTI bytes as nibabel's."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from anomaly.io import load_image, save_image
from anomaly.preprocess import make_grid


@pytest.mark.parametrize("name", ["sub-01_T1w.nii", "sub-01_T1w.nii.gz"])
@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_load_image_returns_a_private_writable_array(tmp_path, rng, name, dtype):
    # Read without an extra copy, but never an array backed by the file (a memory map
    # of a .nii) or by the caller's image: NaNs are zeroed in place.
    grid = make_grid(6.0)
    array = (rng.normal(size=grid.shape) * 100 + 500).astype(dtype)
    path = tmp_path / name
    nib.save(grid.to_image(array), path)
    before = path.read_bytes()
    data = np.asarray(load_image(path).dataobj)
    assert data.dtype == np.float32 and data.flags.writeable
    np.testing.assert_array_equal(data, array.astype(np.float32))
    data[:] = 0.0
    assert path.read_bytes() == before
    in_memory = grid.to_image(array.astype(np.float32))
    loaded = np.asarray(load_image(in_memory).dataobj)
    assert not np.shares_memory(loaded, np.asarray(in_memory.dataobj))


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int16, np.float64])
def test_nii_gz_maps_hold_the_bytes_nibabel_writes(tmp_path, rng, dtype):
    grid = make_grid(6.0)
    values = rng.normal(size=grid.shape) * 10
    values[:5] = np.nan if dtype in (np.float32, np.float64) else 0  # a run, as outside the brain
    array = values.astype(dtype)
    ours, reference = tmp_path / "ours.nii.gz", tmp_path / "reference.nii.gz"
    save_image(grid.to_image(array), ours)
    nib.save(grid.to_image(array), reference)
    assert gzip.decompress(ours.read_bytes()) == gzip.decompress(reference.read_bytes())
    loaded = nib.load(ours)
    np.testing.assert_array_equal(np.asarray(loaded.dataobj), array)
    np.testing.assert_array_equal(loaded.affine, grid.affine)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_scaled_integer_images_keep_nibabel_scaling(tmp_path, rng):
    img = nib.Nifti1Image((rng.normal(size=(8, 9, 10)) * 1000).astype(np.float32), np.eye(4))
    img.set_data_dtype(np.int16)  # nibabel picks scl_slope/scl_inter when writing
    save_image(img, tmp_path / "ours.nii.gz")
    nib.save(img, tmp_path / "reference.nii.gz")
    assert gzip.decompress((tmp_path / "ours.nii.gz").read_bytes()) == \
        gzip.decompress((tmp_path / "reference.nii.gz").read_bytes())


def test_other_formats_are_written_by_nibabel(tmp_path, rng):
    array = rng.normal(size=(5, 6, 7)).astype(np.float32)
    save_image(nib.Nifti1Image(array, np.eye(4)), tmp_path / "plain.nii")
    assert (tmp_path / "plain.nii").read_bytes()[344:348] == b"n+1\x00"  # uncompressed single-file NIfTI
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "plain.nii").dataobj), array)
