"""Where derivative files live: a local folder (or, later, an object store).

The loader asks a store three things: does a relative path exist, what names
are in a folder, and a local file for a path (for a remote store, a verified
copy in the cache).  Paths are relative POSIX paths built by :mod:`layout`.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Protocol

__all__ = ["LocalStore", "Store", "is_remote", "open_store"]


class Store(Protocol):
    """What the loader needs of a place that holds derivative files."""

    def exists(self, relative: PurePosixPath) -> bool: ...

    def listdir(self, relative: PurePosixPath) -> list[str]: ...

    def local_path(self, relative: PurePosixPath) -> Path: ...

    def describe(self, relative: PurePosixPath | None = None) -> str: ...

    def child(self, relative: PurePosixPath) -> Store: ...


class LocalStore:
    """Files in a local folder."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()

    def exists(self, relative: PurePosixPath) -> bool:
        return (self.root / relative).exists()

    def listdir(self, relative: PurePosixPath) -> list[str]:
        folder = self.root / relative
        if not folder.is_dir():
            return []
        return sorted(entry.name for entry in folder.iterdir())

    def local_path(self, relative: PurePosixPath) -> Path:
        return self.root / relative

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
