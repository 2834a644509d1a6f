"""The local cache of remote files: verified on every use, safe under kills.

Layout: ``<cache root>/[<endpoint host>/]<bucket or host>/<key>`` (see
:mod:`.remote`).  Beside each cached file ``<name>`` sits the record of its
download, ``.<name>.remote.json``: URL, size, ETag and SHA-256 of the bytes.
A copy is used only while its size and SHA-256 match the record (and, if its
folder was listed, the listing's size and ETag); otherwise it is downloaded
again.  So a copy damaged or edited in place, even without a change of size,
is never returned.

A download is written to ``.<name>.<random>.part`` in the same folder,
checked, and renamed into place, all under a lock (``filelock``, released by
the system when its holder dies) that every process takes for that file:
one of 256 lock files in ``<cache root>/.locks``, chosen by a hash of the
file's path, so that the cache folders hold nothing but copies and records.
A client killed mid-download leaves its ``.part`` file behind; it is removed
by the next download into that folder, once the lock shows that no download
of that file is alive (a live download holds it, so its ``.part`` is never
touched).  Files are created with the mode the umask gives (``0644`` under
umask ``022``), as any other file the user makes.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import secrets
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import platformdirs
from filelock import FileLock, Timeout

from laion_fmri_dataloader.errors import RemoteError
from laion_fmri_dataloader.io.files import write_json
from laion_fmri_dataloader.io.retry import (
    CorruptDownload,
    IncompleteDownload,
    describe_error,
)

__all__ = [
    "CACHE_ENV",
    "LOCK_WAIT",
    "Verdict",
    "cache_root",
    "cached_entries",
    "check",
    "download_lock",
    "etag_of",
    "forget",
    "keep",
    "lock_folder",
    "partial_file",
    "sweep",
    "verify_download",
]

log = logging.getLogger("laion_fmri")

#: Environment variable naming the cache root of remote datasets.
CACHE_ENV = "LAION_FMRI_CACHE"
#: Longest wait for another process's download of the same file, seconds.
LOCK_WAIT = 300.0

#: What a cached copy is worth: ``valid`` (use it), ``absent`` (no copy or no
#: usable record), ``stale`` (the store holds another version) or ``damaged``
#: (the bytes differ from what was downloaded).
Verdict = Literal["valid", "absent", "stale", "damaged"]

_RECORD_SUFFIX = ".remote.json"
_PART_SUFFIX = ".part"
_HASH_CHUNK = 1 << 20
# Lock files: enough that concurrent downloads seldom share one, few enough
# that they never pile up.
_LOCK_STRIPES = 256


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder under which remote files are cached.

    ``cache_dir`` if given, else ``$LAION_FMRI_CACHE``, else the user's cache
    folder (``~/.cache/laion-fmri-glm`` on Linux).
    """
    chosen = cache_dir or os.environ.get(CACHE_ENV)
    if not chosen:
        chosen = platformdirs.user_cache_dir("laion-fmri-glm", appauthor=False)
    return Path(chosen).expanduser()


def _record_path(target: Path) -> Path:
    return target.with_name(f".{target.name}{_RECORD_SUFFIX}")


def lock_folder(root: Path) -> Path:
    """Where the download locks of the cache under ``root`` are."""
    return root / ".locks"


def _lock(locks: Path, target: Path) -> FileLock:
    digest = hashlib.sha256(os.fsencode(os.path.abspath(target))).digest()
    locks.mkdir(parents=True, exist_ok=True)
    stripe = int.from_bytes(digest[:4], "big") % _LOCK_STRIPES
    return FileLock(locks / f"{stripe:02x}.lock")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_record(target: Path) -> dict | None:
    try:
        record = json.loads(_record_path(target).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def etag_of(entry: dict) -> str | None:
    """The ETag of a listing entry, without its quotes."""
    tag = entry.get("ETag") or entry.get("etag")
    return str(tag).strip('"') if tag else None


def check(target: Path, url: str, listed: dict | None) -> Verdict:
    """Whether the cached copy of ``url`` at ``target`` can be used.

    Parameters
    ----------
    target : pathlib.Path
        Where the copy is cached.
    url : str
        The remote file it is a copy of.
    listed : dict or None
        The file's entry in a listing of its folder (fsspec's ``ls`` detail:
        ``size``, ``ETag``), if the folder was listed.

    Returns
    -------
    Verdict
        ``valid`` only if the record is of ``url``, agrees with ``listed``,
        and the copy's size and SHA-256 are those recorded at download.
    """
    record = _read_record(target)
    try:
        size = target.stat().st_size
    except OSError:
        return "absent"
    if record is None or record.get("url") != url or "sha256" not in record:
        return "absent"
    if listed is not None:
        listed_size, listed_etag = listed.get("size"), etag_of(listed)
        if (listed_size is not None and listed_size != record.get("size")) or (
            listed_etag is not None and listed_etag != record.get("etag")
        ):
            return "stale"
    if size != record.get("size") or _sha256(target) != record["sha256"]:
        return "damaged"
    return "valid"


@contextlib.contextmanager
def download_lock(locks: Path, target: Path, url: str) -> Iterator[None]:
    """Hold the lock of ``target`` for a download; wait for another holder.

    Raises
    ------
    RemoteError
        If another download has held it for :data:`LOCK_WAIT` seconds.
    """
    lock = _lock(locks, target)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.debug("waiting for the download lock %s of %s", lock.lock_file, url)
        try:
            lock.acquire(timeout=LOCK_WAIT)
        except Timeout:
            raise RemoteError(
                f"cannot download {url}: another download has held the cache "
                f"lock {lock.lock_file} for {LOCK_WAIT:.0f} s; wait for it to end, "
                "or stop the process that holds it"
            ) from None
    try:
        yield
    finally:
        lock.release()


def sweep(locks: Path, folder: Path) -> int:
    """Remove the ``.part`` files of dead downloads in ``folder``.

    A ``.part`` file whose file's lock is free belongs to no live download
    (its writer held the lock from before the file was made until after it
    was gone); one whose lock is held is left alone, for a later sweep.

    Returns
    -------
    int
        How many files were removed.
    """
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    parts: dict[str, list[str]] = {}
    for name in names:
        if name.startswith(".") and name.endswith(_PART_SUFFIX):
            # .<file name>.<random, without dots>.part
            target = name[1 : -len(_PART_SUFFIX)].rpartition(".")[0]
            parts.setdefault(target, []).append(name)
    removed = 0
    for target, leftovers in parts.items():
        lock = _lock(locks, folder / target)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue
        try:
            for name in leftovers:
                (folder / name).unlink(missing_ok=True)
                removed += 1
        finally:
            lock.release()
    if removed:
        log.info(
            "removed %d partial downloads left by killed clients in %s", removed, folder
        )
    return removed


@contextlib.contextmanager
def partial_file(target: Path) -> Iterator[Path]:
    """A new empty ``.part`` file beside ``target``, removed when done.

    It is made with ``os.open`` and mode ``0666``, so that the system applies
    the umask (``tempfile.mkstemp`` would make it ``0600`` whatever the umask);
    the downloader writes into it in place, keeping that mode.
    """
    while True:
        temporary = target.with_name(
            f".{target.name}.{secrets.token_hex(4)}{_PART_SUFFIX}"
        )
        try:
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        break
    try:
        yield temporary
    finally:
        temporary.unlink(missing_ok=True)


def verify_download(path: Path, expected_size: int | None, gzipped: bool) -> None:
    """Check a finished download before it enters the cache.

    Raises
    ------
    IncompleteDownload
        If its size is not the listed one (worth another try).
    CorruptDownload
        If it is complete but fails the gzip check (the stored object is bad).
    """
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise IncompleteDownload(f"got {size} of {expected_size} bytes")
    if gzipped:
        try:
            with gzip.open(path, "rb") as stream:
                while stream.read(_HASH_CHUNK):
                    pass
        except (OSError, EOFError, zlib.error) as error:
            raise CorruptDownload(describe_error(error)) from None


def forget(target: Path) -> None:
    """Drop the record of ``target``: a copy without its record is never used,
    so this comes before the copy changes."""
    _record_path(target).unlink(missing_ok=True)


def keep(temporary: Path, target: Path, url: str, etag: str | None) -> None:
    """Move a verified download into place and record what it is."""
    record = {
        "url": url,
        "size": temporary.stat().st_size,
        "etag": etag,
        "sha256": _sha256(temporary),
    }
    os.replace(temporary, target)
    write_json(record, _record_path(target))


def cached_entries(folder: Path, key: str) -> dict[str, dict] | None:
    """A listing of a remote folder made from its cached copy.

    Parameters
    ----------
    folder : pathlib.Path
        The cache folder of the remote folder.
    key : str
        The remote folder's key (without protocol), for the entries' names.

    Returns
    -------
    dict or None
        Entries by name, as fsspec's ``ls`` detail gives them: sub-folders,
        and the files that have a download record (with the recorded size and
        ETag); None if nothing of the folder is cached.
    """
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return None
    entries: dict[str, dict] = {}
    for name in names:
        if name.startswith("."):
            continue
        path = folder / name
        if path.is_dir():
            entries[name] = {"name": f"{key}/{name}", "type": "directory", "size": 0}
        elif (record := _read_record(path)) is not None:
            entries[name] = {
                "name": f"{key}/{name}",
                "type": "file",
                "size": record.get("size"),
                "ETag": record.get("etag"),
            }
    return entries or None
