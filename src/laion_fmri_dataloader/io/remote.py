"""Derivatives in an object store, read through a verified local cache.

:class:`RemoteStore` is the :class:`~laion_fmri_dataloader.io.storage.Store` of a
URL such as ``s3://bucket/prefix`` (any fsspec URL works).  It lists folders
with one request each, remembered for the store's lifetime, and downloads only
the files the loader asks for, into a local cache (:mod:`.cache`) where they
are reused without any network request once verified against their download
record (size and SHA-256).  Uploads are in :mod:`.upload`.

S3 access is anonymous unless credentials are given, either through the usual
AWS environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``...) or through
``storage_options`` (``{"anon": False}``, ``{"key": ..., "secret": ...}``).  A
custom endpoint comes from ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``
(botocore reads them itself) or from ``storage_options={"endpoint_url": ...}``.

Cache layout
------------
``<cache root>/[<endpoint host>/]<bucket or host>/<key>``.  The cache root is
``cache_dir`` if given, else ``$LAION_FMRI_CACHE``, else the user's cache
folder (``~/.cache/laion-fmri-glm`` on Linux); the endpoint host is there only for
a custom S3 endpoint, so that a local MinIO bucket never shadows an AWS one.
A download goes to a ``.part`` file in the same folder, is checked (size
against the listing; a ``.gz`` file is decompressed in full, which checks its
CRC) and only then renamed into place, so that the cache never holds a partial
file; one process at a time downloads a given file.

Network faults
--------------
A dropped connection, a timeout, a 5xx or 429 answer and a short download
are retried with exponential backoff and jitter (:class:`~.retry.RetryPolicy`:
4 tries, waits of at most 0.2 s doubling, by default; ``$LAION_FMRI_RETRIES``
and ``$LAION_FMRI_RETRY_DELAY`` change it).  The retries of s3fs and botocore
are switched off, so that each try is one request and the bound is ours.  A
complete download that fails the gzip check raises
:class:`~laion_fmri_dataloader.errors.CorruptFileError` at once (the stored
object is bad; another try would not help).  A missing object raises
:class:`~laion_fmri_dataloader.errors.NotFoundError` listing what the folder
holds; anything else a :class:`~laion_fmri_dataloader.errors.RemoteError`
naming the URL.  A server that hangs is bounded by the connect (5 s) and read
(15 s) timeouts of s3fs on each try.  When the store cannot be reached at all,
folders are listed from the cache instead, with one warning, so that files
downloaded before still load.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import fsspec

from laion_fmri_dataloader.errors import (
    InvalidLabelError,
    LaionFmriError,
    NotFoundError,
    RemoteError,
    did_you_mean,
)
from laion_fmri_dataloader.io import cache
from laion_fmri_dataloader.io.retry import (
    RemoteFailure,
    RetryPolicy,
    call,
    describe_error,
)

__all__ = ["RemoteStore", "open_filesystem"]

log = logging.getLogger("laion_fmri")

_S3_PROTOCOLS = ("s3", "s3a")
# Options that say how to authenticate; if any is given, anonymous access is
# not assumed.
_CREDENTIAL_OPTIONS = ("anon", "key", "secret", "token", "profile", "session")
_CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE")


def _filesystem_options(url: str, storage_options: dict) -> tuple[dict, str | None]:
    """fsspec options of ``url`` with our defaults, and a custom S3 endpoint."""
    options = dict(storage_options)
    # Each store gets its own file system, since ours has its retries changed.
    options.setdefault("skip_instance_cache", True)
    if urlsplit(url).scheme not in _S3_PROTOCOLS:
        return options, None
    if not any(name in options for name in _CREDENTIAL_OPTIONS):
        options["anon"] = not any(os.environ.get(name) for name in _CREDENTIAL_ENV)
    # botocore retries 5xx on its own; one attempt per call keeps the bound ours.
    options["config_kwargs"] = {
        "retries": {"total_max_attempts": 1},
        **options.get("config_kwargs", {}),
    }
    endpoint = (
        options.get("endpoint_url")
        or options.get("client_kwargs", {}).get("endpoint_url")
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    return options, endpoint


def open_filesystem(
    url: str, storage_options: dict | None
) -> tuple[fsspec.AbstractFileSystem, str, str | None]:
    """The fsspec file system of ``url``, with its retries off.

    Returns
    -------
    tuple
        The file system, the URL's key (without protocol or trailing ``/``)
        and the custom S3 endpoint, if any.

    Raises
    ------
    RemoteError
        If the URL's file system cannot be opened (unknown protocol, missing
        package).
    """
    options, endpoint = _filesystem_options(url, storage_options or {})
    try:
        filesystem, root = fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError, TypeError) as error:
        raise RemoteError(f"cannot open {url}: {describe_error(error)}") from None
    if hasattr(filesystem, "retries"):
        # s3fs retries failed calls and body reads itself (5 times by default).
        filesystem.retries = 1
    return filesystem, root.rstrip("/"), endpoint


def _safe_part(text: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in text)
    return "_" if cleaned in ("", ".", "..") else cleaned


def _cache_folder(root: Path, url: str, endpoint: str | None) -> Path:
    parts = urlsplit(url)
    pieces = [parts.netloc, *(piece for piece in parts.path.split("/") if piece)]
    if endpoint:
        pieces.insert(0, urlsplit(endpoint).netloc or endpoint)
    return root.joinpath(*(_safe_part(piece) for piece in pieces))


def _check_relative(relative: PurePosixPath) -> PurePosixPath:
    relative = PurePosixPath(relative)
    if relative.is_absolute() or ".." in relative.parts:
        raise InvalidLabelError(
            f"remote path {str(relative)!r} must be relative and stay inside the "
            "dataset (no leading '/', no '..')"
        )
    return relative


def _basename(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1]


@dataclass
class _Connection:
    """What a store shares with its children: file system, listings, state."""

    filesystem: fsspec.AbstractFileSystem
    retry: RetryPolicy
    offline_fallback: bool
    # The download locks of the cache root.
    locks: Path
    listings: dict[str, dict[str, dict]] = field(default_factory=dict)
    # The failure that made listings come from the cache, once it happened.
    offline: RemoteFailure | None = None
    # Cache folders whose leftovers of killed downloads were removed.
    swept: set[Path] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


class RemoteStore:
    """Derivative files in an object store, read through a local cache.

    Parameters
    ----------
    url : str
        ``s3://bucket/prefix`` or any fsspec URL of the dataset folder.
    cache_dir : str or path-like, optional
        Cache root (default ``$LAION_FMRI_CACHE``, else the user's cache
        folder); files go to ``<root>/[<endpoint>/]<bucket>/<key>``.
    storage_options : dict, optional
        Options of the fsspec file system; ours are defaults underneath
        (anonymous S3 without credentials, no retries inside s3fs/botocore).
    retry : RetryPolicy, optional
        Retry policy (default :meth:`RetryPolicy.from_env`).
    offline_fallback : bool
        When the store cannot be reached (after the retries), list folders
        from the cache, with one warning, so that cached files still load.
        The pipeline turns it off: it must see every file of the store.

    Raises
    ------
    InvalidLabelError
        If the URL names no bucket or folder.
    RemoteError
        If the URL's file system cannot be opened (unknown protocol, missing
        package).
    """

    def __init__(
        self,
        url: str,
        cache_dir: str | os.PathLike | None = None,
        storage_options: dict | None = None,
        *,
        retry: RetryPolicy | None = None,
        offline_fallback: bool = True,
    ) -> None:
        filesystem, self._root, endpoint = open_filesystem(url, storage_options)
        if not self._root:
            raise InvalidLabelError(f"{url!r} names no bucket or folder")
        root = cache.cache_root(cache_dir)
        self._connection = _Connection(
            filesystem,
            retry or RetryPolicy.from_env(),
            offline_fallback,
            cache.lock_folder(root),
        )
        self._cache = _cache_folder(root, url, endpoint)

    def __repr__(self) -> str:
        return f"RemoteStore({self.describe()!r}, cache={str(self._cache)!r})"

    @property
    def cache_folder(self) -> Path:
        """The local folder that mirrors this store's files."""
        return self._cache

    def _key(self, relative: PurePosixPath | None) -> str:
        if relative is None or not PurePosixPath(relative).parts:
            return self._root
        return f"{self._root}/{_check_relative(relative).as_posix()}"

    def describe(self, relative: PurePosixPath | None = None) -> str:
        """The URL of ``relative`` (or of the store)."""
        return self._connection.filesystem.unstrip_protocol(self._key(relative))

    def child(self, relative: PurePosixPath) -> RemoteStore:
        """The store of a subfolder; it shares the connection and listings."""
        store = object.__new__(RemoteStore)
        store._connection = self._connection
        store._root = self._key(relative)
        store._cache = self._cache / _check_relative(relative)
        return store

    def _entries(self, relative: PurePosixPath) -> dict[str, dict]:
        """Entries of a remote folder by name: one request, then remembered.

        A folder that does not exist has no entries.

        Raises
        ------
        RemoteFailure
            If listing fails for any other reason than a missing folder.
        """
        connection = self._connection
        key = self._key(relative)
        if key not in connection.listings:
            connection.listings[key] = self._list(relative)
        return connection.listings[key]

    def _list(self, relative: PurePosixPath) -> dict[str, dict]:
        connection = self._connection
        if connection.offline is not None:
            return self._cached_listing(relative, connection.offline)
        key = self._key(relative)
        try:
            listing = call(
                connection.retry,
                "list",
                self.describe(relative),
                lambda: connection.filesystem.ls(key, detail=True),
            )
        except RemoteFailure as failure:
            if failure.kind == "missing":
                return {}
            if failure.kind != "unreachable" or not connection.offline_fallback:
                raise
            entries = self._cached_listing(relative, failure)
            self._go_offline(failure)
            return entries
        return {
            _basename(entry["name"]): entry
            for entry in listing
            if entry["name"].rstrip("/") != key
        }

    def _cached_listing(
        self, relative: PurePosixPath, failure: RemoteFailure
    ) -> dict[str, dict]:
        """What the cache holds of a folder the store could not list.

        Raises
        ------
        RemoteError
            If the cache holds nothing of it.
        """
        entries = cache.cached_entries(self._cache / relative, self._key(relative))
        if entries is None:
            raise failure.error(
                f"; nothing of {self.describe(relative)} is in the cache either"
            ) from None
        return entries

    def _go_offline(self, failure: RemoteFailure) -> None:
        """List from the cache from now on, and say so once."""
        connection = self._connection
        with connection.lock:
            first = connection.offline is None
            connection.offline = failure
        if first:
            log.warning(
                "could not refresh the listing of %s (%s); listing the files "
                "cached in %s instead: only files downloaded before can be "
                "loaded until the store can be reached again",
                failure.url,
                failure.reason,
                self._cache,
            )

    def _listing_or_raise(self, relative: PurePosixPath) -> dict[str, dict]:
        try:
            return self._entries(relative)
        except RemoteFailure as failure:
            raise failure.error() from None

    def exists(self, relative: PurePosixPath) -> bool:
        """Whether a file or folder exists (from the listing of its parent)."""
        relative = _check_relative(relative)
        if not relative.parts:
            return bool(self._listing_or_raise(relative))
        return relative.name in self._listing_or_raise(relative.parent)

    def listdir(self, relative: PurePosixPath) -> list[str]:
        """Names in a folder, sorted; empty if the folder does not exist."""
        return sorted(self._listing_or_raise(_check_relative(relative)))

    def _listed_folder(self, relative: PurePosixPath) -> dict[str, dict] | None:
        """The listing of the folder of ``relative``, if it was listed already."""
        return self._connection.listings.get(self._key(relative.parent))

    def _listed(self, relative: PurePosixPath) -> dict | None:
        """The entry of ``relative`` if its folder was listed already, else None."""
        listing = self._listed_folder(relative)
        return None if listing is None else listing.get(relative.name)

    def _available(self, relative: PurePosixPath) -> str:
        listing = self._listed_folder(relative)
        if listing is None:
            return f"listing {self.describe(relative.parent)} is not allowed"
        return f"{self.describe(relative.parent)}: " + did_you_mean(
            relative.name, sorted(listing)
        )

    def _entry(self, relative: PurePosixPath) -> dict:
        """The listing entry of a remote file; asks the server if not listed."""
        url = self.describe(relative)
        try:
            listing = self._entries(relative.parent)
        except RemoteFailure as failure:
            if failure.kind != "denied":
                raise failure.error() from None
            # Some buckets let anyone read objects but not list them.
            return self._info(relative)
        entry = listing.get(relative.name)
        if entry is None:
            if self._connection.offline is not None:
                raise self._not_cached(relative)
            raise NotFoundError(f"{url} does not exist; {self._available(relative)}")
        if entry.get("type") == "directory":
            raise NotFoundError(f"{url} is a folder, not a file")
        return entry

    def _failure_context(self, relative: PurePosixPath, failure: RemoteFailure) -> str:
        """What ends the message of a failed read: what the folder holds."""
        if failure.kind not in ("missing", "denied"):
            return ""
        context = "; " + self._available(relative)
        if failure.kind == "denied" and self._listed_folder(relative) is None:
            context += (
                ", and then S3 answers a missing object with 'access denied' too: "
                "check the name"
            )
        return context

    def _info(self, relative: PurePosixPath) -> dict:
        connection = self._connection
        key = self._key(relative)
        try:
            return call(
                connection.retry,
                "look up",
                self.describe(relative),
                lambda: connection.filesystem.info(key),
            )
        except RemoteFailure as failure:
            raise failure.error(self._failure_context(relative, failure)) from None

    def local_path(self, relative: PurePosixPath) -> Path:
        """A verified local copy of a remote file, downloaded if not cached.

        A cached copy is used if its size and SHA-256 are those recorded when
        it was downloaded (and the folder's listing, if made, shows the same
        object); else it is downloaded again.

        Raises
        ------
        NotFoundError
            If the object does not exist; the message lists its folder.
        RemoteError
            If access is denied, the download fails after the retries, or the
            store cannot be reached and the cache has no verified copy.
        CorruptFileError
            If the object in the store is a corrupt gzip file.
        """
        relative = _check_relative(relative)
        target = self._cache / relative
        url = self.describe(relative)
        listed = self._listed(relative)
        verdict = cache.check(target, url, listed)
        if verdict == "valid":
            return target
        if verdict == "damaged":
            log.warning(
                "the cached copy %s of %s differs from what was downloaded "
                "(size or SHA-256); downloading it again",
                target,
                url,
            )
        entry = listed if listed is not None else self._entry(relative)
        if self._connection.offline is not None:
            raise self._not_cached(relative)
        self._download(relative, target, entry)
        return target

    def _not_cached(self, relative: PurePosixPath) -> LaionFmriError:
        """The error of a file that is needed while the store is offline."""
        offline = self._connection.offline
        assert offline is not None, "only asked once the store is offline"
        return offline.error(
            f"; {self.describe(relative)} has no verified copy in the cache"
        )

    def _sweep(self, folder: Path) -> None:
        """Remove leftovers of killed downloads, once per folder and store."""
        connection = self._connection
        with connection.lock:
            if folder in connection.swept:
                return
            connection.swept.add(folder)
        cache.sweep(connection.locks, folder)

    def _download(self, relative: PurePosixPath, target: Path, entry: dict) -> None:
        url = self.describe(relative)
        key = self._key(relative)
        connection = self._connection
        target.parent.mkdir(parents=True, exist_ok=True)
        self._sweep(target.parent)

        def attempt() -> None:
            with cache.partial_file(target) as temporary:
                connection.filesystem.get_file(key, os.fspath(temporary))
                cache.verify_download(
                    temporary, entry.get("size"), gzipped=target.name.endswith(".gz")
                )
                cache.keep(temporary, target, url, cache.etag_of(entry))

        with cache.download_lock(connection.locks, target, url):
            # Another process may have fetched it while this one waited.
            if cache.check(target, url, entry) == "valid":
                return
            cache.forget(target)
            log.debug("downloading %s to %s", url, target)
            try:
                call(connection.retry, "download", url, attempt)
            except RemoteFailure as failure:
                context = self._failure_context(relative, failure)
                if failure.kind == "missing":
                    # The folder was listed with the object in it.
                    context = " (any more)" + context
                raise failure.error(context) from None

    def files_under(self, relative: PurePosixPath) -> list[PurePosixPath]:
        """Every file below a remote folder (relative to the store), sorted."""
        relative = _check_relative(relative)
        found = []
        for name, entry in sorted(self._listing_or_raise(relative).items()):
            if entry.get("type") == "directory":
                found += self.files_under(relative / name)
            else:
                found.append(relative / name)
        return found
