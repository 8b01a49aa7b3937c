"""RegionStats.means and the focal log-ratio columns of region_table on a tiny hand-made grid."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly.atlas import Atlas, RegionStats, region_table
from anomaly.atlas.petlevels import LOGRATIO_SD_FLOOR, LogRatioNorm
from anomaly.io import AnomalyInputError
from anomaly.normative import SubjectScore
from anomaly.preprocess import Grid

SHAPE = (6, 5, 4)


@pytest.fixture
def tiny(rng):
    """A 3-region atlas, a brain mask and a T1w + PET score whose PET misses two voxels."""
    grid = Grid(SHAPE, np.diag([4.0, 4.0, 4.0, 1.0]), 4.0)
    labels = np.zeros(SHAPE, np.int32)
    labels[:3, :, :2] = 1
    labels[3:, :, :2] = 2
    labels[:, :2, 2:] = 7
    mask = np.ones(SHAPE, bool)
    mask[0, 0, :] = False
    pet = rng.uniform(0.5, 1.5, SHAPE).astype(np.float32)
    z = rng.normal(size=(2, *SHAPE)).astype(np.float32)
    for voxel in ((4, 2, 0), (1, 0, 3)):  # not covered: SUVR 0, z NaN
        pet[voxel] = 0.0
        z[(1, *voxel)] = np.nan
    score = SubjectScore(z=z, anomaly=np.abs(z[0]), present=np.array([True, True]), modalities=["T1w", "pet"],
                         data=np.stack([rng.normal(size=SHAPE).astype(np.float32), pet]), qc={}, grid=grid)
    atlas = Atlas(grid.to_image(labels), {1: "A", 2: "B", 7: "C"}, name="tiny")
    return score, atlas, labels, mask


def test_means_match_numpy_and_leave_out_invalid_voxels(tiny):
    score, atlas, labels, mask = tiny
    stats = RegionStats(atlas, mask)
    pet, z = score.data[1], score.z[1]
    means = stats.means(pet, finite_in=z, nonzero=True)
    for k, index in enumerate((1, 2, 7)):
        voxels = (labels == index) & mask & np.isfinite(z) & (pet != 0)
        np.testing.assert_allclose(means[k], pet[voxels].astype(np.float64).mean(), rtol=1e-12)
    t1w = score.z[0]
    np.testing.assert_allclose(stats.means(t1w), stats.summarise(t1w)["mean"], rtol=1e-6)
    assert np.isnan(stats.means(np.full(SHAPE, np.nan))).all()
    with pytest.raises(AnomalyInputError, match="finite_in: shape"):
        stats.means(pet, finite_in=z[:, :2, :])


def test_focal_logratio_columns_are_the_ratio_against_the_controls(tiny):
    score, atlas, labels, mask = tiny
    stats = RegionStats(atlas, mask)
    norm = LogRatioNorm(index=stats.index, mean=np.array([0.05, -0.02, 0.0]), sd=np.array([0.1, 0.004, 0.2]),
                        n=np.array([8, 8, 8]), n_voxels=stats.n_voxels)
    cortex_mean = 0.9
    table = region_table(score, atlas, 0.0, mask=mask, stats=stats, focal_norm=norm, cortex_pet_mean=cortex_mean)
    assert list(table.columns[-2:]) == ["pet_focal_logratio", "pet_focal_logratio_z"]
    pet, z = score.data[1], score.z[1]
    for k, index in enumerate((1, 2, 7)):
        voxels = (labels == index) & mask & np.isfinite(z)
        diff = np.log(pet[voxels].astype(np.float64).mean() / cortex_mean) - norm.mean[k]
        np.testing.assert_allclose(table["pet_focal_logratio"][k], diff, rtol=1e-9)
        np.testing.assert_allclose(table["pet_focal_logratio_z"][k], diff / max(norm.sd[k], LOGRATIO_SD_FLOOR),
                                   rtol=1e-9)
    # Without the norm the table keeps its former columns; with a norm of another atlas, n/a.
    assert "pet_focal_logratio" not in region_table(score, atlas, 0.0, mask=mask, stats=stats).columns
    other = region_table(score, atlas, 0.0, stats=RegionStats(atlas), focal_norm=norm, cortex_pet_mean=cortex_mean)
    assert other["pet_focal_logratio_z"].isna().all()  # no mask: other voxel counts, another grouping
    missing = region_table(score, atlas, 0.0, stats=stats, focal_norm=LogRatioNorm.missing(), cortex_pet_mean=0.9)
    assert missing["pet_focal_logratio"].isna().all()
    score.present[1] = False
    absent = region_table(score, atlas, None, stats=stats, focal_norm=norm, cortex_pet_mean=None)
    assert absent[["pet_focal_logratio", "pet_focal_logratio_z"]].isna().all().all()
