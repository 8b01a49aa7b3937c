"""anomaly: weakly supervised brain anomaly detection.

Normative models of healthy brains (a MONAI denoising autoencoder and a classical
voxelwise z-score model), atlas-region summaries of each patient's deviation, and a
multiple-instance attention regressor of the Coma Recovery Scale-Revised (CRS-R).
"""

__version__ = "0.1.0"
