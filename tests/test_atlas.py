"""Tests for anomaly.atlas: shipped and user atlases, resampling, summaries, painting."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from anomaly.atlas import DEFAULT_ATLAS, Atlas, atlas_dir, list_atlases
from anomaly.io import AnomalyInputError

SHAPE = (6, 5, 4)  # non-cubic on purpose: catches swapped axes


def mni_affine(shape, factor=1):
    """Affine whose voxels tile the MNI152 bounding box (-90..90, -126..91, -72..109).

    Tiny images then pass the input gate's MNI field-of-view check. ``factor`` > 1
    gives a coarser grid whose voxel 0 has the same centre, so that voxel j of the
    coarse grid is voxel ``factor * j`` of the fine one.
    """
    lo = np.array([-90.0, -126.0, -72.0])
    size = np.array([180.0, 217.0, 181.0]) / np.array(shape)
    affine = np.diag(list(size * factor) + [1.0])
    affine[:3, 3] = lo + size / 2  # centre of voxel 0
    return affine


def tiny_labels() -> np.ndarray:
    """Label 1: 40 voxels, label 2: 16 voxels, label 7: one voxel at odd coordinates."""
    data = np.zeros(SHAPE, dtype=np.int16)
    data[0:2, :, :] = 1
    data[2:4, 0:2, :] = 2
    data[5, 3, 1] = 7
    return data


TABLE = pd.DataFrame({"index": [1, 2, 7], "name": ["Left_Thing", "Right_Thing", "Dot"]})


@pytest.fixture
def tiny_atlas() -> Atlas:
    img = nib.Nifti1Image(tiny_labels(), mni_affine(SHAPE))
    return Atlas.load(img, labels=TABLE)


@pytest.fixture
def tiny_files(tmp_path):
    """A user atlas on disk with its sibling label table."""
    nii = tmp_path / "atlas-tiny_dseg.nii.gz"
    nib.Nifti1Image(tiny_labels(), mni_affine(SHAPE)).to_filename(nii)
    TABLE.to_csv(tmp_path / "atlas-tiny_dseg.tsv", sep="\t", index=False)
    return nii


# ---------------------------------------------------------------- shipped atlases
def test_list_atlases_and_default():
    assert list_atlases() == ["aal", "neuromorphometrics"]
    assert DEFAULT_ATLAS in list_atlases()
    assert atlas_dir() is not None and (atlas_dir() / "README.md").is_file()


def test_shipped_neuromorphometrics_has_coma_regions():
    atlas = Atlas.load("neuromorphometrics")
    names = set(atlas.labels["name"])
    assert {"Brain_Stem", "Left_Thalamus_Proper", "Right_Thalamus_Proper"} <= names
    assert len(atlas.labels) == 136
    assert atlas.label_array().dtype == np.int32
    assert atlas.region_mask("^brain_stem$").sum() > 1000
    assert len(atlas.region_indices("cerebell")) >= 5  # hemispheres + vermis
    # The label table lists exactly the labels of the image.
    present = np.unique(atlas.label_array())
    assert sorted(atlas.labels["index"]) == present[present > 0].tolist()


def test_shipped_aal_loads_case_insensitive():
    atlas = Atlas.load("AAL")
    assert atlas.name == "aal"
    assert len(atlas.labels) == 120
    assert atlas.region_indices("precuneus")  # posteromedial cortex


def test_unknown_atlas_name_lists_known():
    with pytest.raises(AnomalyInputError, match="aal, neuromorphometrics") as err:
        Atlas.load("harvard")
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- user atlases
def test_user_atlas_from_path_with_sibling_table(tiny_files):
    atlas = Atlas.load(tiny_files)
    assert atlas.name == "tiny"
    assert atlas.labels["index"].tolist() == [1, 2, 7]
    assert atlas.labels["name"].tolist() == ["Left_Thing", "Right_Thing", "Dot"]
    assert atlas.shape == SHAPE
    np.testing.assert_array_equal(atlas.label_array(), tiny_labels())
    with pytest.raises(ValueError):  # read-only view protects the atlas
        atlas.label_array()[0, 0, 0] = 3


def test_user_atlas_without_table_gets_auto_names(tmp_path):
    nii = tmp_path / "my-parcels.nii"
    nib.Nifti1Image(tiny_labels(), mni_affine(SHAPE)).to_filename(nii)
    atlas = Atlas.load(str(nii))
    assert atlas.name == "myparcels"  # BIDS entity values are alphanumeric
    assert atlas.labels["name"].tolist() == ["region_1", "region_2", "region_7"]


def test_float_stored_whole_labels_are_accepted(tmp_path):
    nii = tmp_path / "floaty.nii.gz"
    nib.Nifti1Image(tiny_labels().astype(np.float32), mni_affine(SHAPE)).to_filename(nii)
    atlas = Atlas.load(nii, labels=TABLE)
    np.testing.assert_array_equal(atlas.label_array(), tiny_labels())


def test_labels_missing_from_table_warn_and_extra_entries_dropped(tmp_path):
    table = tmp_path / "labels.tsv"
    pd.DataFrame({"index": [0, 1, 2, 99], "name": ["Background", "A", "B", "Absent"]}).to_csv(
        table, sep="\t", index=False
    )
    img = nib.Nifti1Image(tiny_labels(), mni_affine(SHAPE))
    with pytest.warns(UserWarning, match=r"missing from the label table.*: 7"):
        atlas = Atlas.load(img, labels=table)
    assert atlas.labels["index"].tolist() == [1, 2, 7]
    assert atlas.labels["name"].tolist() == ["A", "B", "region_7"]


def test_error_non_integer_labels(tmp_path):
    data = tiny_labels().astype(np.float32)
    data[0, 0, 0] = 1.5
    nii = tmp_path / "prob.nii.gz"
    nib.Nifti1Image(data, mni_affine(SHAPE)).to_filename(nii)
    with pytest.raises(AnomalyInputError, match="whole numbers") as err:
        Atlas.load(nii)
    assert "prob.nii.gz" in str(err.value)


def test_error_4d_image(tmp_path):
    nii = tmp_path / "four.nii.gz"
    nib.Nifti1Image(np.stack([tiny_labels()] * 2, axis=-1), mni_affine(SHAPE)).to_filename(nii)
    with pytest.raises(AnomalyInputError, match="3D") as err:
        Atlas.load(nii)
    assert "four.nii.gz" in str(err.value)


def test_error_missing_file(tmp_path):
    with pytest.raises(AnomalyInputError, match="not found"):
        Atlas.load(tmp_path / "nothing.nii.gz")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("label\tname\n1\tA\n", "lacks column.*index"),
        ("index\tregion\n1\tA\n", "lacks column.*name"),
        ("index\tname\n1\tA\n1\tB\n2\tC\n", "duplicate index.*1"),
        ("index\tname\n1\tA\n2.5\tB\n", "non-integer index.*2.5"),
    ],
)
def test_error_bad_label_tables(tmp_path, tiny_files, content, message):
    table = tmp_path / "bad.tsv"
    table.write_text(content)
    with pytest.raises(AnomalyInputError, match=message) as err:
        Atlas.load(tiny_files, labels=table)
    assert "bad.tsv" in str(err.value)


# ---------------------------------------------------------------- regions
def test_region_mask_and_indices(tiny_atlas):
    assert tiny_atlas.region_indices("thing") == [1, 2]  # case-insensitive
    assert tiny_atlas.region_indices("^right") == [2]
    mask = tiny_atlas.region_mask("_thing$")
    assert mask.dtype == bool and mask.shape == SHAPE
    assert mask.sum() == 40 + 16
    with pytest.raises(AnomalyInputError, match="no region"):
        tiny_atlas.region_mask("hippocampus")
    with pytest.raises(AnomalyInputError, match="invalid regular expression"):
        tiny_atlas.region_indices("(")


# ---------------------------------------------------------------- resampling
def test_resample_warns_with_lost_label_names(tiny_atlas):
    target = nib.Nifti1Image(np.zeros((3, 3, 2), np.float32), mni_affine(SHAPE, factor=2))
    with pytest.warns(UserWarning, match=r"1 region\(s\).*Dot \(7\)"):
        coarse = tiny_atlas.resample_to(target)
    assert coarse.shape == (3, 3, 2)
    assert coarse.labels["index"].tolist() == [1, 2]
    # Nearest neighbour: coarse voxel j is fine voxel 2j.
    np.testing.assert_array_equal(coarse.label_array(), tiny_labels()[::2, ::2, ::2])
    assert coarse.label_array().dtype == np.int32


def test_resample_to_grid_and_same_grid_is_silent(tiny_atlas):
    from anomaly.preprocess import Grid

    grid = Grid(shape=SHAPE, affine=mni_affine(SHAPE), resolution=30.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = tiny_atlas.resample_to(grid)
    np.testing.assert_array_equal(same.label_array(), tiny_atlas.label_array())


# ---------------------------------------------------------------- summaries
def tiny_stat_map() -> np.ndarray:
    stat = np.zeros(SHAPE)
    labels = tiny_labels()
    one = np.full(40, -3.0)
    one[:10] = np.nan  # NaN voxels are ignored but counted in n_voxels
    stat[labels == 1] = one
    stat[labels == 2] = np.arange(16.0)
    stat[labels == 7] = np.nan  # an all-NaN region
    return stat


def test_summarise_hand_computed(tiny_atlas):
    table = tiny_atlas.summarise(tiny_stat_map(), threshold=2.0)
    assert list(table.columns) == [
        "index", "name", "n_voxels", "mean", "min", "max", "p05", "p95",
        "frac_above", "frac_below",
    ]
    rows = table.set_index("index")
    # Region 2 holds 0, 1, ..., 15.
    r2 = rows.loc[2]
    assert r2["n_voxels"] == 16
    assert r2["mean"] == pytest.approx(7.5)
    assert (r2["min"], r2["max"]) == (0.0, 15.0)
    assert r2["p05"] == pytest.approx(0.75)  # 0.05 * (16 - 1)
    assert r2["p95"] == pytest.approx(14.25)
    assert r2["frac_above"] == pytest.approx(13 / 16)  # 3..15 are > 2
    assert r2["frac_below"] == 0.0
    # Region 1: 30 voxels at -3, 10 NaN.
    r1 = rows.loc[1]
    assert r1["n_voxels"] == 40
    assert r1[["mean", "min", "max", "p05", "p95"]].tolist() == [-3.0] * 5
    assert (r1["frac_above"], r1["frac_below"]) == (0.0, 1.0)
    # Region 7: all NaN -> NaN statistics, voxel count kept.
    r7 = rows.loc[7]
    assert r7["n_voxels"] == 1
    assert r7.drop(["name", "n_voxels"]).astype(float).isna().all()


def test_summarise_matches_numpy_on_random_map(rng):
    labels = rng.integers(0, 9, size=(7, 6, 5)).astype(np.int16)
    labels[labels == 4] = 0  # a gap in the label values
    atlas = Atlas.load(nib.Nifti1Image(labels, mni_affine(labels.shape)))
    stat = rng.normal(0, 2, size=labels.shape)
    stat[rng.random(labels.shape) < 0.1] = np.nan
    mask = rng.random(labels.shape) < 0.8
    table = atlas.summarise(stat, threshold=1.5, percentiles=(2.5, 50, 90), mask=mask)
    assert {"p2.5", "p50", "p90"} <= set(table.columns)
    for row in table.itertuples(index=False):
        in_region = (labels == row.index) & mask
        vals = stat[in_region]
        vals = vals[np.isfinite(vals)]
        assert row.n_voxels == in_region.sum()
        assert row.mean == pytest.approx(vals.mean())
        assert row.min == vals.min() and row.max == vals.max()
        for q in (2.5, 50, 90):
            got = table.loc[table["index"] == row.index, f"p{q:g}"].item()
            assert got == pytest.approx(np.percentile(vals, q))
        assert row.frac_above == pytest.approx(np.mean(vals > 1.5))
        assert row.frac_below == pytest.approx(np.mean(vals < -1.5))


def test_summarise_image_input_and_errors(tiny_atlas, tmp_path):
    stat = tiny_stat_map()
    path = tmp_path / "stat.nii.gz"
    nib.Nifti1Image(stat.astype(np.float32), mni_affine(SHAPE)).to_filename(path)
    from_image = tiny_atlas.summarise(path)
    pd.testing.assert_frame_equal(from_image, tiny_atlas.summarise(stat))
    with pytest.raises(AnomalyInputError, match="does not match the atlas grid"):
        tiny_atlas.summarise(np.zeros((5, 5, 5)))
    with pytest.raises(AnomalyInputError, match="percentiles"):
        tiny_atlas.summarise(stat, percentiles=(5, 101))


# ---------------------------------------------------------------- painting
def test_paint_round_trip(tiny_atlas):
    values = pd.Series({1: 0.25, 2: np.nan, 7: -4.0})
    img = tiny_atlas.paint(values)
    assert img.get_data_dtype() == np.float32
    data = img.get_fdata()
    assert data[tiny_labels() == 0].max() == 0
    assert np.all(data[tiny_labels() == 2] == 0)  # NaN painted as 0
    back = tiny_atlas.summarise(img).set_index("index")["mean"]
    assert back.loc[1] == pytest.approx(0.25)
    assert back.loc[7] == pytest.approx(-4.0)
    np.testing.assert_allclose(tiny_atlas.paint({1: 1.0}).affine, tiny_atlas.image.affine)
    with pytest.raises(AnomalyInputError, match="not in atlas"):
        tiny_atlas.paint({3: 1.0})


def test_summarise_image_keeps_nan_and_resamples(tiny_atlas, tmp_path):
    # Same values on a left-right flipped (LAS) grid: resampled back exactly.
    stat = tiny_stat_map()
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = SHAPE[0] - 1
    las = nib.Nifti1Image(stat[::-1].astype(np.float32), tiny_atlas.image.affine @ flip)
    table = tiny_atlas.summarise(las).set_index("index")
    assert table.loc[2, "mean"] == pytest.approx(7.5, abs=1e-4)
    assert np.isnan(table.loc[7, "mean"])
    with pytest.raises(AnomalyInputError, match="stat_map"):
        tiny_atlas.summarise(tmp_path / "missing.nii.gz")
