"""Where derivative files live: a local folder or an object store.

The loader asks a store three things: does a relative path exist, what names
are in a folder, and a local file for a path (for a remote store, a verified
copy in the cache, see :mod:`.remote`).  Paths are relative POSIX paths built
by :mod:`layout`.

A local folder is read through symbolic links, files and folders alike, as
DataLad and git-annex datasets are made of them; a link is listed under its
own name, never its target's (an annexed file's target is named after its
checksum).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Protocol

from laion_fmri_dataloader.errors import NotFoundError

__all__ = ["LocalStore", "Store", "is_remote", "open_store"]


class Store(Protocol):
    """What the loader needs of a place that holds derivative files."""

    def exists(self, relative: PurePosixPath) -> bool: ...

    def listdir(self, relative: PurePosixPath) -> list[str]: ...

    def local_path(self, relative: PurePosixPath) -> Path: ...

    def describe(self, relative: PurePosixPath | None = None) -> str: ...

    def child(self, relative: PurePosixPath) -> Store: ...


class LocalStore:
    """Files in a local folder (symbolic links followed)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()

    def exists(self, relative: PurePosixPath) -> bool:
        # A dangling link counts: it is a file of the dataset whose content is
        # elsewhere (git-annex), and local_path says how to get it.
        return os.path.lexists(self.root / relative)

    def listdir(self, relative: PurePosixPath) -> list[str]:
        folder = self.root / relative
        if not folder.is_dir():
            return []
        return sorted(entry.name for entry in folder.iterdir())

    def local_path(self, relative: PurePosixPath) -> Path:
        """The file's path; a dangling symbolic link raises NotFoundError."""
        path = self.root / relative
        if path.is_symlink() and not path.exists():
            raise NotFoundError(
                f"{path} is a symbolic link to {os.readlink(path)}, which does not "
                "exist: if this is a DataLad or git-annex dataset, get the "
                f"file's content with `datalad get {path}` (or `git annex get`)"
            )
        return path

    def describe(self, relative: PurePosixPath | None = None) -> str:
        return str(self.root if relative is None else self.root / relative)

    def child(self, relative: PurePosixPath) -> LocalStore:
        return LocalStore(self.root / relative)


def is_remote(location: str | os.PathLike) -> bool:
    """Whether ``location`` is a URL of a remote file system (``s3://...``)."""
    text = os.fspath(location)
    return "://" in text and not text.startswith("file://")


def open_store(
    data_dir: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    storage_options: dict | None = None,
) -> Store:
    """Open a local folder, or a remote URL through :mod:`.remote`."""
    if is_remote(data_dir):
        from laion_fmri_dataloader.io.remote import RemoteStore

        return RemoteStore(
            os.fspath(data_dir), cache_dir=cache_dir, storage_options=storage_options
        )
    return LocalStore(os.fspath(data_dir).removeprefix("file://"))
