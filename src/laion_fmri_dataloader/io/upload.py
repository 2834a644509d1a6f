"""Uploads to an object store: finished folders, and the pipeline's stage.

:func:`upload_tree` sends a finished folder, one PUT per file (atomic in an
object store), JSON sidecars only once every map is in.  :func:`staged_output`
gives the pipeline a local folder and uploads it when the run ends well, one
subject at a time, then the group, then ``dataset_description.json``.
Each PUT is retried as every remote request is (:mod:`.retry`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import TypeVar

from laion_fmri_dataloader import layout
from laion_fmri_dataloader.errors import NotFoundError
from laion_fmri_dataloader.io.cache import cache_root
from laion_fmri_dataloader.io.remote import RemoteStore, open_filesystem
from laion_fmri_dataloader.io.retry import RemoteFailure, RetryPolicy, call

__all__ = ["staged_output", "upload_tree"]

log = logging.getLogger("laion_fmri")

# Files in flight at once: for small files the latency of each request, not
# the bandwidth, bounds a transfer.
_CONCURRENCY = 8

_Result = TypeVar("_Result")


def _run_all(tasks: Sequence[Callable[[], _Result]]) -> list[_Result]:
    """Run tasks a few at a time; results in task order, the first error raised.

    Every task has finished when this returns or raises, so that no transfer
    is left running behind an error.
    """
    if len(tasks) <= 1:
        return [task() for task in tasks]
    with ThreadPoolExecutor(max_workers=min(_CONCURRENCY, len(tasks))) as pool:
        futures = [pool.submit(task) for task in tasks]
    return [future.result() for future in futures]


def _local_files(local_dir: Path) -> list[PurePosixPath]:
    """Files below ``local_dir``, skipping dot-files (temporary writes)."""
    found = []
    for folder, names, files in os.walk(local_dir):
        names[:] = sorted(name for name in names if not name.startswith("."))
        base = PurePosixPath(Path(folder).relative_to(local_dir).as_posix())
        found += [base / name for name in sorted(files) if not name.startswith(".")]
    return found


class _Uploader:
    def __init__(self, url: str, storage_options: dict | None, retry: RetryPolicy):
        self.filesystem, self.root, _ = open_filesystem(url, storage_options)
        self.retry = retry

    def _put(self, local_dir: Path, relative: PurePosixPath) -> str:
        key = f"{self.root}/{relative.as_posix()}"
        url = self.filesystem.unstrip_protocol(key)
        source = os.fspath(local_dir / relative)
        try:
            call(
                self.retry,
                "upload to",
                url,
                lambda: self.filesystem.put_file(source, key),
            )
        except RemoteFailure as failure:
            raise failure.error() from None
        return url

    def upload(self, local_dir: Path, relatives: Sequence[PurePosixPath]) -> list:
        """Upload maps and figures, then (once all are there) JSON sidecars, so
        that a sidecar never announces a map that is not there yet."""
        maps = sorted(path for path in relatives if path.suffix != ".json")
        sidecars = sorted(path for path in relatives if path.suffix == ".json")
        urls = []
        for phase in (maps, sidecars):
            urls += _run_all(
                [functools.partial(self._put, local_dir, path) for path in phase]
            )
        return urls


def upload_tree(
    local_dir: str | os.PathLike,
    url: str,
    storage_options: dict | None = None,
    *,
    retry: RetryPolicy | None = None,
) -> list[str]:
    """Upload every file below a local folder to a remote folder.

    Each file is one PUT, which an object store applies atomically; JSON
    sidecars go after the maps they describe.  Dot-files (temporary files of
    atomic writes, cache records) are skipped.

    Parameters
    ----------
    local_dir : path-like
        A finished subject's folder, the group folder or a whole derivative tree.
    url : str
        The remote folder that takes its place, e.g. ``s3://bucket/glm/group_level``.
    storage_options : dict, optional
        fsspec options, as for :class:`RemoteStore`.
    retry : RetryPolicy, optional
        Retry policy of each upload (default :meth:`RetryPolicy.from_env`).

    Returns
    -------
    list of str
        The URLs written, in upload order.

    Raises
    ------
    NotFoundError
        If ``local_dir`` is not a folder, or the bucket does not exist.
    RemoteError
        If access is denied, or an upload fails after the retries.
    """
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise NotFoundError(f"cannot upload {local_dir}: it is not a folder")
    uploader = _Uploader(url, storage_options, retry or RetryPolicy.from_env())
    return uploader.upload(local_dir, _local_files(local_dir))


def _stamp(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_size, status.st_mtime_ns


def _upload_unit(relative: PurePosixPath) -> str:
    """A subject's folder, the group folder, or the top (dataset description)."""
    parts = relative.parts
    if len(parts) > 2 and parts[0] == layout.FIRST_LEVEL_DIR.name:
        return f"{parts[0]}/{parts[1]}"
    if len(parts) > 1 and parts[0] == layout.GROUP_LEVEL_DIR.name:
        return parts[0]
    return ""


def _changed_units(
    stage: Path, before: dict[PurePosixPath, tuple[int, int]]
) -> dict[str, list[PurePosixPath]]:
    """New or changed files of the stage, by upload unit."""
    units: dict[str, list[PurePosixPath]] = {}
    for relative in _local_files(stage):
        if before.get(relative) != _stamp(stage / relative):
            units.setdefault(_upload_unit(relative), []).append(relative)
    return units


@contextlib.contextmanager
def staged_output(
    output_url: str,
    storage_options: dict | None = None,
    *,
    fetch: Sequence[str] = (),
    cache_dir: str | os.PathLike | None = None,
    retry: RetryPolicy | None = None,
) -> Iterator[Path]:
    """A local folder for outputs that go to ``output_url`` once complete.

    The pipeline writes into the yielded folder; when the block ends without
    an exception, new or changed files are uploaded one subject folder at a
    time, then the group folder, then the top-level files
    (``dataset_description.json``), maps before their sidecars.  If the block
    raises, nothing is uploaded; the folder is kept (its path is logged) if it
    holds new subject or group outputs, else removed.

    Parameters
    ----------
    output_url : str
        Remote GLM derivative folder, e.g. ``s3://bucket/derivatives/glm``.
    storage_options : dict, optional
        fsspec options, as for :class:`RemoteStore`.
    fetch : sequence of str
        Remote subfolders to copy into the stage first (through the cache),
        e.g. ``("first_level",)`` for the group level, which reads them.
    cache_dir : path-like, optional
        Cache root; the stage is made in ``<cache root>/staging``, under the
        home folder by default, which cluster nodes usually share.
    retry : RetryPolicy, optional
        Retry policy of downloads and uploads.

    Yields
    ------
    pathlib.Path
        The local stage folder.
    """
    retry = retry or RetryPolicy.from_env()
    parent = cache_root(cache_dir) / "staging"
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix="output-", dir=parent))
    try:
        if fetch:
            # The pipeline must see every file: never a listing from the cache.
            store = RemoteStore(
                output_url,
                cache_dir,
                storage_options=storage_options,
                retry=retry,
                offline_fallback=False,
            )

            def copy(relative: PurePosixPath) -> None:
                (stage / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(store.local_path(relative), stage / relative)

            _run_all(
                [
                    functools.partial(copy, relative)
                    for folder in fetch
                    for relative in store.files_under(PurePosixPath(folder))
                ]
            )
        before = {
            relative: _stamp(stage / relative) for relative in _local_files(stage)
        }
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    try:
        yield stage
    except BaseException:
        units = _changed_units(stage, before)
        if any(units):
            log.warning(
                "%s failed; outputs made before the failure are kept in %s, not "
                "uploaded to %s",
                ", ".join(unit for unit in units if unit) or "the run",
                stage,
                output_url,
            )
        else:
            shutil.rmtree(stage, ignore_errors=True)
        raise
    units = _changed_units(stage, before)
    uploader = _Uploader(output_url, storage_options, retry)
    try:
        # Subjects first, then the group, then the description of the whole.
        for unit in sorted(units, key=lambda name: (name == "", name)):
            uploader.upload(stage, units[unit])
            log.info(
                "uploaded %s (%d files) to %s",
                unit or "top-level files",
                len(units[unit]),
                output_url,
            )
    except BaseException:
        log.warning(
            "outputs in %s were not (all) uploaded to %s; upload them with "
            "laion_fmri_dataloader.io.upload.upload_tree",
            stage,
            output_url,
        )
        raise
    shutil.rmtree(stage)
