"""The denoising autoencoder: a MONAI 3D U-Net, coarse noise and modality dropout.

Kascenas et al. (2022, "Denoising autoencoders for unsupervised anomaly detection in
brain MRI", MIDL) showed that a U-Net trained to remove *coarse* (low-frequency) noise
from healthy images is a strong and simple anomaly detector: coarse noise looks like a
lesion-sized intensity change, so the network learns to pull such changes back towards
healthy anatomy, and the residual at test time highlights lesions. We follow that
recipe in 3D with all modalities as channels.

Missing modalities: the network sees ``C`` image channels plus ``C`` constant presence
channels. During training whole modalities are dropped at random (zeroed, presence 0)
and the loss ignores them, so that a patient without PET or FLAIR can still be scored.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import UNet


def build_network(n_modalities: int, channels: Sequence[int] = (16, 32, 64, 128)) -> torch.nn.Module:
    """Return the 3D U-Net used as denoising autoencoder.

    Parameters
    ----------
    n_modalities : int
        Image channels ``C``; the network takes ``2 C`` inputs (images and presence
        flags) and returns ``C`` reconstructions.
    channels : sequence of int
        Feature maps per level; the grid must be divisible by ``2 ** (len - 1)``.
    """
    strides = (2,) * (len(channels) - 1)
    return UNet(spatial_dims=3, in_channels=2 * n_modalities, out_channels=n_modalities,
                channels=tuple(channels), strides=strides, num_res_units=1, norm="instance")


def network_input(images: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Stack images (zeroed where absent) with constant presence channels.

    Parameters
    ----------
    images : Tensor, shape (B, C, X, Y, Z)
    present : Tensor of bool, shape (B, C)
    """
    flags = present.to(images.dtype)[:, :, None, None, None].expand_as(images)
    return torch.cat([images * flags, flags], dim=1)


def coarse_noise(shape: Sequence[int], *, scale: float, coarseness: int,
                 generator: torch.Generator, mask: torch.Tensor) -> torch.Tensor:
    """Low-frequency Gaussian noise restricted to the brain.

    White noise is drawn on a grid ``coarseness`` times smaller than the image and
    upsampled trilinearly, which gives blobs of roughly lesion size.

    Parameters
    ----------
    shape : sequence of int
        ``(B, C, X, Y, Z)``.
    scale : float
        Standard deviation of the noise before upsampling (image units are
        standardised per channel, so 0.2-0.5 is a lesion-like contrast).
    coarseness : int
        Downsampling factor of the noise grid.
    generator : torch.Generator
        Source of randomness (kept by the trainer so that resuming is exact).
    mask : Tensor, shape (X, Y, Z)
        Brain mask; noise outside the brain would teach nothing.
    """
    b, c, *spatial = shape
    small = [max(2, s // coarseness) for s in spatial]
    noise = torch.randn((b, c, *small), generator=generator) * scale
    noise = F.interpolate(noise, size=tuple(spatial), mode="trilinear", align_corners=False)
    return noise * mask


def augment_batch(images: torch.Tensor, *, strength: float, generator: torch.Generator,
                  mask: torch.Tensor) -> torch.Tensor:
    """Healthy-variation augmentation of a standardised batch, drawn from ``generator``.

    A smooth random displacement (4 x 4 x 4 control grid, SD ``0.05 strength`` of the
    half field of view: about 4 mm at 2 mm and strength 1), a smooth multiplicative bias
    field (SD ``0.1 strength`` in log units) and a per-channel contrast gain
    (``exp(N(0, 0.1 strength))``), the variation that a new site or brain adds. The
    network learns to reconstruct anatomy and contrast it did not see; the same
    generator state gives the same batch, so a resumed training replays it exactly.

    Parameters
    ----------
    images : Tensor, shape (B, C, X, Y, Z)
    strength : float
        0 returns the images unchanged (and draws nothing).
    generator : torch.Generator
    mask : Tensor, shape (X, Y, Z)
        Brain mask applied to the result.
    """
    if strength <= 0:
        return images
    b, c, *spatial = images.shape
    disp = torch.randn((b, 3, 4, 4, 4), generator=generator) * (0.05 * strength)
    disp = F.interpolate(disp, size=tuple(spatial), mode="trilinear", align_corners=False)
    identity = torch.eye(3, 4).unsqueeze(0).expand(b, 3, 4)
    grid = F.affine_grid(identity, [b, c, *spatial], align_corners=False)
    warped = F.grid_sample(images, grid + disp.permute(0, 2, 3, 4, 1), mode="bilinear",
                           padding_mode="zeros", align_corners=False)
    bias = torch.randn((b, c, 3, 3, 3), generator=generator) * (0.1 * strength)
    bias = torch.exp(F.interpolate(bias, size=tuple(spatial), mode="trilinear", align_corners=False))
    gain = torch.exp(torch.randn((b, c, 1, 1, 1), generator=generator) * (0.1 * strength))
    return warped * bias * gain * mask


def drop_modalities(present: torch.Tensor, *, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Randomly hide modalities, always keeping at least one present per subject.

    Returns the new presence mask, shape (B, C).
    """
    keep = torch.rand(present.shape, generator=generator) >= probability
    kept = present & keep
    # A subject left with nothing keeps its first available modality.
    empty = ~kept.any(dim=1)
    if empty.any():
        first = present.float().argmax(dim=1)
        kept[empty, first[empty]] = True
    return kept
