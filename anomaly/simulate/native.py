"""Native-space subjects: a simulated MNI-space subject as it comes off a scanner.

:func:`write_native_subject` (called by :func:`anomaly.simulate.writer.write_subject`
when ``SimulationConfig.space == "native"``) resamples each MNI-space volume of a
simulated subject into a scanner space of its own:

- a random head pose (rotation within :data:`MAX_ROTATION_DEG` per axis, translation
  within :data:`MAX_SHIFT_MM` per axis, an isotropic head scale in :data:`SCALE_RANGE`),
  shared by every volume of the session, plus a small extra rigid motion per volume
  (the patient moves between acquisitions);
- a smooth random warp (displacement of about :data:`WARP_MM` mm, sampled on a coarse
  lattice and interpolated);
- anisotropic MRI voxels (:data:`MRI_VOXEL_MM`) and larger PET voxels
  (:data:`PET_VOXEL_MM`), both scaled with the simulation resolution so that a 4 mm
  cohort stays small, and a non-RAS voxel order (sagittal MRI, LPS PET).

Ground truth (``derivatives/simulation/sub-<l>/``): the MNI-space masks as written
for MNI cohorts, the same masks and the template brain mask in native T1w space
(``space-T1w``), the warp (``desc-warp_xfm.nii.gz``: displacement in mm on the MNI
grid: the native voxel at scanner position ``y`` shows the MNI position ``u + warp(u)``
with ``u = world^-1 y``) and ``sub-<l>_native.json`` (the pose of every volume: the
4 x 4 MNI-to-scanner ``world`` matrices).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from anomaly.constants import PET
from anomaly.io import save_image, write_json

__all__ = [
    "MAX_ROTATION_DEG", "MAX_SHIFT_MM", "MRI_VOXEL_MM", "PET_VOXEL_MM", "SCALE_RANGE",
    "WARP_MM", "NativePose", "draw_pose", "to_native", "write_native_subject",
]

#: Largest head rotation about each axis, in degrees.
MAX_ROTATION_DEG = 12.0
#: Largest head translation along each axis, in mm.
MAX_SHIFT_MM = 20.0
#: Range of the isotropic head scale (a smaller or larger head than the template).
SCALE_RANGE = (0.94, 1.06)
#: RMS amplitude of the smooth warp, in mm.
WARP_MM = 1.5
#: Extra rigid motion of each non-T1w volume relative to the T1w: degrees and mm.
INTER_SCAN_MOTION = (4.0, 5.0)
#: MRI voxel size (mm) at a 2 mm simulation; scaled by resolution / 2 above that.
MRI_VOXEL_MM = (1.0, 1.0, 1.3)
#: PET voxel size (mm) at a 2 mm simulation; scaled like :data:`MRI_VOXEL_MM`.
PET_VOXEL_MM = 2.5
#: Voxel order of the native images: axis permutation and flips relative to RAS.
_MRI_AXES = ((1, 2, 0), (-1, -1, 1))  # sagittal acquisition: A->P, S->I, L->R
_PET_AXES = ((0, 1, 2), (-1, -1, 1))  # LPS
#: Margin around the transformed brain box of the native field of view, in mm.
_FOV_MARGIN_MM = 12.0
_WARP_LATTICE_MM = 40.0


class NativePose:
    """The true MNI-to-native mapping of one subject.

    Parameters
    ----------
    head : numpy.ndarray
        4 x 4 MNI-to-scanner world matrix of the T1w (rotation, translation, scale).
    motion : dict of str to numpy.ndarray
        Extra 4 x 4 rigid motion per modality, applied after ``head`` (identity for T1w).
    warp : numpy.ndarray
        Displacement field (mm, float32, shape grid + (3,)) on the MNI grid.
    grid_affine : numpy.ndarray
        Voxel-to-MNI affine of the grid of ``warp``.
    """

    def __init__(self, head: np.ndarray, motion: dict[str, np.ndarray], warp: np.ndarray,
                 grid_affine: np.ndarray) -> None:
        self.head = head
        self.motion = motion
        self.warp = warp
        self.grid_affine = grid_affine

    def world(self, modality: str) -> np.ndarray:
        """4 x 4 MNI-to-scanner world matrix of ``modality`` (after the warp)."""
        return self.motion.get(modality, np.eye(4)) @ self.head


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    """3 x 3 rotation from angles about x, y and z (degrees)."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _rigid(rng: np.random.Generator, degrees: float, mm: float, scale: float = 1.0) -> np.ndarray:
    """Random 4 x 4 similarity: rotation within ``degrees``, shift within ``mm``."""
    matrix = np.eye(4)
    matrix[:3, :3] = _rotation(rng.uniform(-degrees, degrees, 3)) * scale
    matrix[:3, 3] = rng.uniform(-mm, mm, 3)
    return matrix


def draw_pose(rng: np.random.Generator, modalities: Sequence[str], shape: tuple[int, int, int],
              grid_affine: np.ndarray) -> NativePose:
    """Draw a random pose, per-volume motion and smooth warp.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of every random draw.
    modalities : sequence of str
        Modalities of the subject; each but T1w gets its own extra motion.
    shape : tuple of int
        Shape of the MNI grid of the warp.
    grid_affine : numpy.ndarray
        Voxel-to-MNI affine of that grid.

    Returns
    -------
    NativePose
    """
    head = _rigid(rng, MAX_ROTATION_DEG, MAX_SHIFT_MM, rng.uniform(*SCALE_RANGE))
    motion = {m: _rigid(rng, *INTER_SCAN_MOTION) for m in modalities if m != "T1w"}
    voxel = float(np.abs(grid_affine[:3, :3]).max())
    coarse = [max(2, int(np.ceil(s * voxel / _WARP_LATTICE_MM)) + 1) for s in shape]
    # Zoom (cubic) of a coarse random lattice: smooth by construction.
    warp = np.stack([
        ndimage.zoom(rng.normal(0.0, WARP_MM, coarse), [s / c for s, c in zip(shape, coarse, strict=True)],
                     order=3, grid_mode=True, mode="nearest")[: shape[0], : shape[1], : shape[2]]
        for _ in range(3)
    ], axis=-1).astype(np.float32)
    return NativePose(head, motion, warp, np.asarray(grid_affine, dtype=np.float64))


def _native_grid(pose: NativePose, modality: str, mask: np.ndarray, voxel: np.ndarray,
                 axes: tuple[tuple[int, ...], tuple[int, ...]]) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and voxel-to-scanner affine of the native image covering the brain."""
    ijk = np.argwhere(mask)
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    box = np.stack([ijk.min(0), ijk.max(0)])
    mni = nib.affines.apply_affine(pose.grid_affine, box[corners, [0, 1, 2]])
    world = nib.affines.apply_affine(pose.world(modality), mni)
    order, flips = axes
    # Voxel axes: permuted and flipped world axes, scaled by the voxel size.
    linear = np.zeros((3, 3))
    for axis, (world_axis, flip) in enumerate(zip(order, flips, strict=True)):
        linear[world_axis, axis] = flip * voxel[axis]
    in_voxels = world @ np.linalg.inv(linear).T
    lo = in_voxels.min(0) - _FOV_MARGIN_MM / voxel
    hi = in_voxels.max(0) + _FOV_MARGIN_MM / voxel
    shape = tuple(int(n) for n in np.ceil(hi - lo) + 1)
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = linear @ np.floor(lo)
    return shape, affine


def to_native(volume: np.ndarray, pose: NativePose, modality: str, shape: tuple[int, int, int],
              affine: np.ndarray, order: int) -> np.ndarray:
    """Resample an MNI-grid volume into a native grid through the true pose and warp.

    Parameters
    ----------
    volume : numpy.ndarray
        Array on the MNI grid of ``pose``.
    pose : NativePose
        True mapping.
    modality : str
        Which volume's pose to use.
    shape : tuple of int
        Native grid shape.
    affine : numpy.ndarray
        Native voxel-to-scanner affine.
    order : int
        Spline order (1 for images, 0 for masks).

    Returns
    -------
    numpy.ndarray
        float32 array of ``shape``; 0 outside the MNI grid.
    """
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1).T
    scanner = nib.affines.apply_affine(affine, ijk)
    mni = nib.affines.apply_affine(np.linalg.inv(pose.world(modality)), scanner)
    to_grid = np.linalg.inv(pose.grid_affine)
    grid = nib.affines.apply_affine(to_grid, mni)
    # x_mni = A^-1 y + d(A^-1 y): the warp is looked up at the unwarped position.
    shift = np.stack([ndimage.map_coordinates(pose.warp[..., k], grid.T, order=1, mode="nearest")
                      for k in range(3)], axis=1)
    grid = nib.affines.apply_affine(to_grid, mni + shift)
    out = ndimage.map_coordinates(np.asarray(volume, dtype=np.float32), grid.T, order=order,
                                  mode="constant", cval=0.0)
    return out.reshape(shape).astype(np.float32)


def _image(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """NIfTI in scanner coordinates (sform/qform code 1)."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code=1)  # 1 = scanner anatomical
    img.set_qform(affine, code=1)
    return img


def pose_rng(label: str, gains: dict[str, float]) -> np.random.Generator:
    """Random generator of a subject's pose: from its label and its (seeded) gains."""
    salt = round(sum(gains.values()) * 1e6) % (2**32)
    return np.random.default_rng([zlib.crc32(label.encode()), salt])


def _voxel_size(modality: str, resolution: float) -> np.ndarray:
    """Native voxel size of a modality at a simulation resolution (mm)."""
    factor = max(1.0, resolution / 2.0)
    base = np.full(3, PET_VOXEL_MM) if modality == PET else np.asarray(MRI_VOXEL_MM)
    return base * factor


def write_native_subject(root: Path, label: str, images: dict[str, np.ndarray], affine: np.ndarray,
                         brain_mask: np.ndarray, truth_masks: dict[str, np.ndarray],
                         gains: dict[str, float], missing: Sequence[str]) -> None:
    """Write one subject's volumes in native space, with native and MNI ground truth.

    Parameters
    ----------
    root : pathlib.Path
        Dataset root.
    label : str
        Subject label (without ``sub-``).
    images : dict of str to numpy.ndarray
        MNI-grid volume per modality (MRI values whole numbers).
    affine : numpy.ndarray
        Voxel-to-MNI affine of the MNI grid.
    brain_mask : numpy.ndarray of bool
        Template brain mask on the MNI grid (its native version is the mask truth).
    truth_masks : dict of str to numpy.ndarray
        Ground-truth masks on the MNI grid by ``desc`` ("lesion", "focal"); empty for controls.
    gains : dict of str to float
        The subject's gains (they seed the pose, see :func:`pose_rng`).
    missing : sequence of str
        Modalities not to write.
    """
    resolution = float(np.abs(affine[:3, :3]).max())
    present = [m for m in images if m not in missing]
    pose = draw_pose(pose_rng(label, gains), list(images), brain_mask.shape, affine)
    grids = {}
    for modality in present:
        is_pet = modality == PET
        voxel = _voxel_size(modality, resolution)
        shape, native_affine = _native_grid(pose, modality, brain_mask, voxel,
                                            _PET_AXES if is_pet else _MRI_AXES)
        grids[modality] = (shape, native_affine)
        data = to_native(images[modality], pose, modality, shape, native_affine, order=1)
        # MRI as scanners store it (int16 whole numbers); PET stays float32.
        data = data if is_pet else np.rint(np.clip(data, 0, 32767)).astype(np.int16)
        folder = "pet" if is_pet else "anat"
        save_image(_image(data, native_affine), root / f"sub-{label}" / folder / f"sub-{label}_{modality}.nii.gz")
    _write_native_truth(root, label, pose, grids, brain_mask, truth_masks)


def _write_native_truth(root: Path, label: str, pose: NativePose,
                        grids: dict[str, tuple[tuple[int, int, int], np.ndarray]],
                        brain_mask: np.ndarray, truth_masks: dict[str, np.ndarray]) -> None:
    """Native T1w-space masks, the warp and the poses under derivatives/simulation/."""
    truth = root / "derivatives" / "simulation" / f"sub-{label}"
    reference = "T1w" if "T1w" in grids else next(iter(grids))
    shape, native_affine = grids[reference]
    for desc, mask in {"brain": brain_mask, **truth_masks}.items():
        native = to_native(mask.astype(np.float32), pose, reference, shape, native_affine, order=1) >= 0.5
        save_image(_image(native.astype(np.uint8), native_affine),
                   truth / f"sub-{label}_space-{reference}_desc-{desc}_mask.nii.gz")
    warp = nib.Nifti1Image(pose.warp, pose.grid_affine)
    warp.set_sform(pose.grid_affine, code=4)
    save_image(warp, truth / f"sub-{label}_from-MNI_to-native_desc-warp_xfm.nii.gz")
    write_json({
        "description": "the native voxel at scanner position y shows MNI position u + warp(u), "
                       "u = inverse(world[modality]) @ y; warp in mm on the MNI grid",
        "reference": reference,
        "world": {m: pose.world(m).tolist() for m in grids},
        "head_scale": float(np.cbrt(abs(np.linalg.det(pose.head[:3, :3])))),
    }, truth / f"sub-{label}_native.json")
