"""CRS-R regression from atlas-region anomaly summaries.

A lightweight multiple-instance attention regressor (one bag per patient, one instance
per atlas region) with ordinal, ranking and kappa losses, label-distribution smoothing,
curricula, small-cohort validation (bootstrap intervals, nested CV, baselines,
conformal intervals), model folders and group analysis.

Public API
----------
load_region_bags, RegionBags, select_features, DEFAULT_FEATURES, DEFAULT_GLOBAL_FEATURES
MILRegressor
cross_validate, CVResult, regression_metrics, bootstrap_metrics,
quadratic_weighted_kappa, conformal_quantile, MeanBaseline, RidgeBaseline
lds_weights, parse_loss
pacing_sizes, curriculum_order
benjamini_hochberg, region_correlations
save_crs_model, load_crs_model, CRSModel
fit_crs, predict_crs, predict_from_tables, group_analysis
"""

from .commands import fit_crs, group_analysis, predict_crs, predict_from_tables, select_features
from .curriculum import curriculum_masks, curriculum_order, pacing_sizes
from .features import (DEFAULT_FEATURES, DEFAULT_GLOBAL_FEATURES, RegionBags, bags_from_tables, find_region_tables,
                       load_region_bags)
from .group import benjamini_hochberg, region_correlations
from .losses import LOSSES, lds_weights, parse_loss
from .model import MILRegressor
from .modelio import CRSModel, load_crs_model, save_crs_model
from .validation import (CVResult, MeanBaseline, RidgeBaseline, bootstrap_metrics, conformal_quantile, cross_validate,
                         make_splits, prediction_interval, quadratic_weighted_kappa, regression_metrics)

__all__ = [
    "RegionBags",
    "load_region_bags",
    "bags_from_tables",
    "find_region_tables",
    "select_features",
    "DEFAULT_FEATURES",
    "DEFAULT_GLOBAL_FEATURES",
    "MILRegressor",
    "LOSSES",
    "parse_loss",
    "lds_weights",
    "pacing_sizes",
    "curriculum_order",
    "curriculum_masks",
    "cross_validate",
    "CVResult",
    "make_splits",
    "regression_metrics",
    "bootstrap_metrics",
    "quadratic_weighted_kappa",
    "conformal_quantile",
    "prediction_interval",
    "MeanBaseline",
    "RidgeBaseline",
    "benjamini_hochberg",
    "region_correlations",
    "CRSModel",
    "save_crs_model",
    "load_crs_model",
    "fit_crs",
    "predict_crs",
    "predict_from_tables",
    "group_analysis",
]
