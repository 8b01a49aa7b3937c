"""Stage 5 of the pipeline: normative models of healthy brains.

A denoising autoencoder (MONAI U-Net) and a classical voxelwise z-score model, fitted on
controls (:class:`NormativeModel`, a scikit-learn estimator), map any subject's deviation
from normal (:meth:`NormativeModel.transform`: z maps per modality and the combined
anomaly map).
"""

from anomaly.constants import LESION_SIGN  # earlier home of the lesion directions
from anomaly.normative.maps import SubjectScore, combine_anomaly
from anomaly.normative.model import NormativeModel

__all__ = ["LESION_SIGN", "NormativeModel", "SubjectScore", "combine_anomaly"]
