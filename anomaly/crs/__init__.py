"""Stage 6 of the pipeline: CRS-R regression from atlas-region anomaly summaries.

A lightweight multiple-instance attention regressor (one bag per patient, one instance
per atlas region) with ordinal, ranking and kappa losses, label-distribution smoothing,
curricula, small-cohort validation (bootstrap intervals, nested CV, baselines,
conformal intervals), model folders and group analysis.

Public API
----------
load_region_bags, RegionBags, select_features, DEFAULT_FEATURES, DEFAULT_GLOBAL_FEATURES
MILRegressor
cross_validate, CVResult, regression_metrics, bootstrap_metrics,
quadratic_weighted_kappa, conformal_quantile, paired_differences, MeanBaseline, RidgeBaseline,
HypothesisBaseline
lds_weights, parse_loss
pacing_sizes, curriculum_order
benjamini_hochberg, region_correlations
save_crs_model, load_crs_model, CRSModel
labelled_cohort, LabelledCohort, predict_from_tables, predict_table, crs_level

The commands that wire these together (``fit_crs``, ``predict_crs``,
``group_analysis``) live in :mod:`anomaly.cli.crs`.
"""

from .cohort import LabelledCohort, labelled_cohort
from .curriculum import curriculum_masks, curriculum_order, pacing_sizes
from .features import (
    DEFAULT_FEATURES,
    DEFAULT_GLOBAL_FEATURES,
    RegionBags,
    bags_from_tables,
    find_region_tables,
    load_region_bags,
    select_features,
)
from .group import benjamini_hochberg, region_correlations
from .hypothesis import HypothesisBaseline
from .losses import LOSSES, lds_weights, parse_loss
from .model import MILRegressor
from .modelio import CRSModel, load_crs_model, save_crs_model
from .predict import crs_level, predict_from_tables, predict_table
from .validation import (
    CVResult,
    MeanBaseline,
    RidgeBaseline,
    bootstrap_metrics,
    conformal_quantile,
    cross_validate,
    make_splits,
    paired_differences,
    prediction_interval,
    quadratic_weighted_kappa,
    regression_metrics,
)

__all__ = [
                       "DEFAULT_FEATURES",
                       "DEFAULT_GLOBAL_FEATURES",
                       "LOSSES",
                       "CRSModel",
                       "CVResult",
                       "HypothesisBaseline",
                       "LabelledCohort",
                       "MILRegressor",
                       "MeanBaseline",
                       "RegionBags",
                       "RidgeBaseline",
                       "bags_from_tables",
                       "benjamini_hochberg",
                       "bootstrap_metrics",
                       "conformal_quantile",
                       "cross_validate",
                       "crs_level",
                       "curriculum_masks",
                       "curriculum_order",
                       "find_region_tables",
                       "labelled_cohort",
                       "lds_weights",
                       "load_crs_model",
                       "load_region_bags",
                       "make_splits",
                       "pacing_sizes",
                       "paired_differences",
                       "parse_loss",
                       "predict_from_tables",
                       "predict_table",
                       "prediction_interval",
                       "quadratic_weighted_kappa",
                       "region_correlations",
                       "regression_metrics",
                       "save_crs_model",
                       "select_features",
]
