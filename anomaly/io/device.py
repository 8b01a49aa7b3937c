"""The one device resolver: ``auto|cpu|cuda[:N]`` to a torch device, or a one-line error.

Both models (the normative autoencoder and the CRS-R regressor) take a ``device``
parameter; they resolve it here, so that a machine without CUDA is reported the same
way whichever command asked for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from anomaly.io.errors import AnomalyInputError

if TYPE_CHECKING:  # torch takes seconds to import: only callers that train need it
    import torch


def resolve_device(device: str) -> torch.device:
    """Map ``auto``, ``cpu`` or ``cuda[:N]`` to a :class:`torch.device`.

    Parameters
    ----------
    device : str
        ``"auto"`` picks CUDA when available, else the CPU.

    Returns
    -------
    torch.device

    Raises
    ------
    AnomalyInputError
        An unknown device name, or CUDA asked for on a machine without it.
    """
    import torch

    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise AnomalyInputError(f"--device: expected auto, cpu or cuda; got {device!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AnomalyInputError(f"--device {name}: no CUDA device is available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:  # e.g. "cuda:x"
        raise AnomalyInputError(f"--device: expected auto, cpu or cuda; got {device!r}") from None
