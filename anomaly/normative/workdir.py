"""The work folder of a fit: preprocessing cache, checkpoint and training log.

A fit given a folder (the model folder, so that ``--resume`` finds its checkpoint)
keeps it; without one it works in a temporary folder removed at the end. The cache of
preprocessed arrays is removed after a successful fit unless asked to keep it, and kept
after a failure or an interruption, so that a resumed fit reuses it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from anomaly.normative.distributed import DistributedContext, barrier


@dataclass(frozen=True)
class WorkDir:
    """Where a fit keeps its intermediate files."""

    path: Path
    temporary: bool

    @property
    def cache(self) -> Path:
        """Folder of the preprocessed-array cache."""
        return self.path / "cache"


@contextmanager
def fit_workdir(workdir: str | Path | None, ctx: DistributedContext, *,
                keep_cache: bool = False) -> Iterator[WorkDir]:
    """Provide the work folder of a fit and tidy it once the fit succeeded.

    Parameters
    ----------
    workdir : path, optional
        Folder to use (created if needed); None for a temporary folder.
    ctx : DistributedContext
        On success every rank waits for the others before the shared cache goes.
    keep_cache : bool
        Keep the cache after a successful fit.
    """
    temporary = workdir is None
    path = Path(tempfile.mkdtemp(prefix="anomaly-fit-")) if temporary else Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    work = WorkDir(path=path, temporary=temporary)
    try:
        yield work
    except BaseException:
        if temporary:  # nothing in it can be resumed
            shutil.rmtree(path, ignore_errors=True)
        raise
    barrier(ctx)  # every rank has read the shared cache before it goes
    if not keep_cache and (ctx.is_main or temporary):
        shutil.rmtree(work.cache, ignore_errors=True)
    if temporary:
        shutil.rmtree(path, ignore_errors=True)
