"""Normative models of healthy brains: denoising autoencoder and voxelwise z-scores."""

from anomaly.normative.model import LESION_SIGN, NormativeModel, SubjectScore, combine_anomaly

__all__ = ["LESION_SIGN", "NormativeModel", "SubjectScore", "combine_anomaly"]
