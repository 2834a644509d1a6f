"""Derivatives in an object store: listings, a verified local cache, uploads.

:class:`RemoteStore` is the :class:`~laion_fmri_dataloader.io.storage.Store` of a
URL such as ``s3://bucket/prefix`` (any fsspec URL works).  It lists folders
with one request each, remembered for the store's lifetime, and downloads only
the files the loader asks for, into a local cache where they are reused
without any network request.

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
Beside each file, a dot-file ``.<name>.remote.json`` records the URL, size and
ETag it was downloaded with.  A copy is reused when its size matches that
record (and, if the folder was listed in this session anyway, the listing's
size and ETag); delete the folder to force fresh downloads.  A download goes
to a temporary file in the same folder, is checked (size against the listing;
a ``.gz`` file is decompressed in full, which checks its CRC) and only then
renamed into place, so that the cache never holds a partial file.

Network faults
--------------
A dropped connection, a timeout, a 5xx or 429 answer and a short download
are retried with exponential backoff (:class:`RetryPolicy`: 4 tries, 0.2 s
doubling, by default; ``$LAION_FMRI_RETRIES`` and ``$LAION_FMRI_RETRY_DELAY``
change it).  The retries of s3fs and botocore are switched off, so that each
try is one request and the bound is ours.  A complete download that fails
the gzip check raises :class:`~laion_fmri_dataloader.errors.CorruptFileError`
at once (the stored object is bad; another try would not help).  A missing
object raises :class:`~laion_fmri_dataloader.errors.NotFoundError`
listing what the folder holds; anything else a
:class:`~laion_fmri_dataloader.errors.RemoteError` naming the URL.  A server
that hangs is bounded by the connect (5 s) and read (15 s) timeouts of s3fs
on each try.

Uploads
-------
:func:`upload_tree` sends a finished folder, one PUT per file (atomic in an
object store), JSON sidecars only once every map is in.  :func:`staged_output`
gives the pipeline a local folder and uploads it when the run ends well, one
subject at a time, then the group, then ``dataset_description.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import http.client
import json
import logging
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar
from urllib.parse import urlsplit

import fsspec
import platformdirs

from laion_fmri_dataloader import layout
from laion_fmri_dataloader.errors import (
    CorruptFileError,
    InvalidLabelError,
    InvalidParameterError,
    NotFoundError,
    RemoteError,
    did_you_mean,
)
from laion_fmri_dataloader.io.files import write_json

__all__ = [
    "CACHE_ENV",
    "RETRIES_ENV",
    "RETRY_DELAY_ENV",
    "RemoteStore",
    "RetryPolicy",
    "cache_root",
    "staged_output",
    "upload_tree",
]

log = logging.getLogger("laion_fmri")

#: Environment variable naming the cache root of remote datasets.
CACHE_ENV = "LAION_FMRI_CACHE"
#: Environment variable with the number of tries of a remote operation.
RETRIES_ENV = "LAION_FMRI_RETRIES"
#: Environment variable with the first backoff delay, seconds.
RETRY_DELAY_ENV = "LAION_FMRI_RETRY_DELAY"

_RECORD_SUFFIX = ".remote.json"
_S3_PROTOCOLS = ("s3", "s3a")
# Options that say how to authenticate; if any is given, anonymous access is
# not assumed.
_CREDENTIAL_OPTIONS = ("anon", "key", "secret", "token", "profile", "session")
_CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE")
_REMOTE_LIBRARIES = ("aiobotocore", "aiohttp", "botocore", "fsspec", "s3fs")

# Files in flight at once: for small files the latency of each request, not
# the bandwidth, bounds a transfer.
_CONCURRENCY = 8

_Result = TypeVar("_Result")


@dataclass(frozen=True)
class RetryPolicy:
    """How a transient network fault is retried.

    Parameters
    ----------
    tries : int
        Attempts in all, the first one included.
    base_delay : float
        Wait before the first retry, seconds; doubled before each next retry.
    max_delay : float
        Longest wait between two tries, seconds.

    Examples
    --------
    >>> [RetryPolicy().delay(retry) for retry in range(3)]
    [0.2, 0.4, 0.8]
    """

    tries: int = 4
    base_delay: float = 0.2
    max_delay: float = 5.0

    def __post_init__(self) -> None:
        if not isinstance(self.tries, int) or self.tries < 1:
            raise InvalidParameterError(
                f"tries must be an integer >= 1; got {self.tries}"
            )
        if self.base_delay < 0 or self.max_delay < 0:
            raise InvalidParameterError(
                "retry delays must be >= 0 seconds; got "
                f"base_delay={self.base_delay}, max_delay={self.max_delay}"
            )

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """The default policy, changed by ``$LAION_FMRI_RETRIES`` and
        ``$LAION_FMRI_RETRY_DELAY`` (seconds) where they are set."""
        options: dict[str, Any] = {}
        for variable, name, kind in (
            (RETRIES_ENV, "tries", int),
            (RETRY_DELAY_ENV, "base_delay", float),
        ):
            text = os.environ.get(variable)
            if text:
                try:
                    options[name] = kind(text)
                except ValueError:
                    raise InvalidParameterError(
                        f"${variable} must be a number; got {text!r}"
                    ) from None
        return cls(**options)

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first)."""
        return min(self.base_delay * 2**retry, self.max_delay)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder under which remote files are cached.

    ``cache_dir`` if given, else ``$LAION_FMRI_CACHE``, else the user's cache
    folder (``~/.cache/laion-fmri-glm`` on Linux).
    """
    chosen = cache_dir or os.environ.get(CACHE_ENV)
    if not chosen:
        chosen = platformdirs.user_cache_dir("laion-fmri-glm", appauthor=False)
    return Path(chosen).expanduser()


class _Missing(Exception):
    """The server says the object or folder does not exist (404)."""


class _Denied(Exception):
    """The server refuses access (401/403)."""


class _BadDownload(Exception):
    """A downloaded copy is shorter or longer than listed; worth another try."""


class _CorruptDownload(Exception):
    """A complete download fails its gzip check: the stored object is corrupt."""


@functools.cache
def _transient_types() -> tuple[type[BaseException], ...]:
    from fsspec.exceptions import FSTimeoutError

    types: list[type[BaseException]] = [
        ConnectionError,
        TimeoutError,
        asyncio.TimeoutError,  # not yet TimeoutError on Python 3.10
        http.client.HTTPException,
        FSTimeoutError,
        _BadDownload,
    ]
    # These libraries come with s3fs; other fsspec back ends may lack them.
    with contextlib.suppress(ImportError):
        import aiohttp

        types += [aiohttp.ClientConnectionError, aiohttp.ClientPayloadError]
    with contextlib.suppress(ImportError):
        from botocore.exceptions import (
            HTTPClientError,
            IncompleteReadError,
            ResponseStreamingError,
        )
        from botocore.parsers import ResponseParserError

        # s3fs retries parser errors too: throttled answers can be invalid XML.
        types += [
            HTTPClientError,
            IncompleteReadError,
            ResponseStreamingError,
            ResponseParserError,
        ]
    return tuple(types)


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen and len(seen) < 20:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def _http_status(error: BaseException) -> int | None:
    """The HTTP status of a botocore ``ClientError`` or an aiohttp answer."""
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    else:
        status = getattr(error, "status", None)
    if isinstance(status, int) and 100 <= status < 600:
        return status
    return None


def _classify(error: BaseException) -> str | None:
    """``missing``, ``denied``, ``transient``, ``failed``, or None for a bug."""
    for link in _chain(error):
        status = _http_status(link)
        if status in (404, 410):
            return "missing"
        if status in (401, 403):
            return "denied"
        if status is not None and (status >= 500 or status in (408, 429)):
            return "transient"
        if status is not None and status >= 400:
            return "failed"
    # An OSError naming a file comes from the local disk, not from the server.
    if isinstance(error, OSError) and error.filename is not None:
        return "failed"
    if isinstance(error, FileNotFoundError):
        return "missing"
    if isinstance(error, PermissionError):
        return "denied"
    if any(isinstance(link, _transient_types()) for link in _chain(error)):
        return "transient"
    library = type(error).__module__.split(".")[0]
    if isinstance(error, OSError) or library in _REMOTE_LIBRARIES:
        return "failed"
    return None


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "no message"
    reason = f"{type(error).__name__}: {text}"
    statuses = [_http_status(link) for link in _chain(error)]
    status = next((status for status in statuses if status is not None), None)
    if status is not None and str(status) not in text:
        reason = f"HTTP {status}, {reason}"
    return reason if len(reason) <= 240 else reason[:237] + "..."


def _call(
    policy: RetryPolicy, action: str, url: str, operation: Callable[[], _Result]
) -> _Result:
    """Run ``operation``, retrying transient faults with exponential backoff.

    Raises
    ------
    _Missing, _Denied
        For the caller to turn into a message that says what exists.
    RemoteError
        After ``policy.tries`` transient faults, or on any other remote failure.
    """
    for attempt in range(1, policy.tries + 1):
        try:
            return operation()
        except Exception as error:
            kind = _classify(error)
            if kind is None:
                raise
            if kind == "missing":
                raise _Missing(_reason(error)) from error
            if kind == "denied":
                raise _Denied(_reason(error)) from error
            if kind == "failed":
                raise RemoteError(
                    f"could not {action} {url}: {_reason(error)}"
                ) from error
            if attempt == policy.tries:
                raise RemoteError(
                    f"could not {action} {url} after {policy.tries} tries "
                    f"({_reason(error)}); the network or the server failed, "
                    "try again later"
                ) from error
            delay = policy.delay(attempt - 1)
            log.warning(
                "could not %s %s (%s); retrying in %.1f s (try %d of %d)",
                action,
                url,
                _reason(error),
                delay,
                attempt + 1,
                policy.tries,
            )
            time.sleep(delay)
    raise AssertionError("unreachable: the last try returns or raises")


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


def _open_filesystem(
    url: str, storage_options: dict | None
) -> tuple[fsspec.AbstractFileSystem, str, str | None]:
    options, endpoint = _filesystem_options(url, storage_options or {})
    try:
        filesystem, root = fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError, TypeError) as error:
        raise RemoteError(f"cannot open {url}: {_reason(error)}") from None
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


def _etag(entry: dict) -> str | None:
    tag = entry.get("ETag") or entry.get("etag")
    return str(tag).strip('"') if tag else None


def _record_path(target: Path) -> Path:
    return target.with_name(f".{target.name}{_RECORD_SUFFIX}")


def _verify(path: Path, expected_size: int | None, gzipped: bool) -> None:
    """Raise if a downloaded copy is short (:class:`_BadDownload`) or, complete,
    fails the gzip check (:class:`_CorruptDownload`)."""
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise _BadDownload(f"got {size} of {expected_size} bytes")
    if gzipped:
        try:
            with gzip.open(path, "rb") as stream:
                while stream.read(1 << 20):
                    pass
        except (OSError, EOFError, zlib.error) as error:
            raise _CorruptDownload(_reason(error)) from None


@dataclass
class _Connection:
    """What a store shares with its children: file system, listings, policy."""

    filesystem: fsspec.AbstractFileSystem
    retry: RetryPolicy
    listings: dict[str, dict[str, dict]] = field(default_factory=dict)


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
    ) -> None:
        filesystem, self._root, endpoint = _open_filesystem(url, storage_options)
        if not self._root:
            raise InvalidLabelError(f"{url!r} names no bucket or folder")
        self._connection = _Connection(filesystem, retry or RetryPolicy.from_env())
        self._cache = _cache_folder(cache_root(cache_dir), url, endpoint)

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

    def _entries(self, key: str) -> dict[str, dict]:
        """Entries of a remote folder by name: one request, then remembered.

        A folder that does not exist has no entries.

        Raises
        ------
        _Denied
            If listing the folder is not allowed.
        """
        connection = self._connection
        if key not in connection.listings:
            url = connection.filesystem.unstrip_protocol(key)
            try:
                listing = _call(
                    connection.retry,
                    "list",
                    url,
                    lambda: connection.filesystem.ls(key, detail=True),
                )
            except _Missing:
                listing = []
            connection.listings[key] = {
                _basename(entry["name"]): entry
                for entry in listing
                if entry["name"].rstrip("/") != key
            }
        return connection.listings[key]

    def _listing_or_raise(self, relative: PurePosixPath) -> dict[str, dict]:
        try:
            return self._entries(self._key(relative))
        except _Denied as denied:
            raise RemoteError(
                f"access denied listing {self.describe(relative)} ({denied}); "
                "give credentials (AWS_ACCESS_KEY_ID/AWS_PROFILE or "
                "storage_options) that may list it"
            ) from None

    def exists(self, relative: PurePosixPath) -> bool:
        """Whether a file or folder exists (from the listing of its parent)."""
        relative = _check_relative(relative)
        if not relative.parts:
            return bool(self._listing_or_raise(relative))
        return relative.name in self._listing_or_raise(relative.parent)

    def listdir(self, relative: PurePosixPath) -> list[str]:
        """Names in a folder, sorted; empty if the folder does not exist."""
        return sorted(self._listing_or_raise(_check_relative(relative)))

    def _listed(self, relative: PurePosixPath) -> dict | None:
        """The entry of ``relative`` if its folder was listed already, else None."""
        listing = self._connection.listings.get(self._key(relative.parent))
        return None if listing is None else listing.get(relative.name)

    def _available(self, relative: PurePosixPath) -> str:
        listing = self._connection.listings.get(self._key(relative.parent))
        if listing is None:
            return f"listing {self.describe(relative.parent)} is not allowed"
        return f"{self.describe(relative.parent)}: " + did_you_mean(
            relative.name, sorted(listing)
        )

    def _entry(self, relative: PurePosixPath) -> dict:
        """The listing entry of a remote file; asks the server if not listed."""
        url = self.describe(relative)
        try:
            listing = self._entries(self._key(relative.parent))
        except _Denied:
            # Some buckets let anyone read objects but not list them.
            return self._info(relative)
        entry = listing.get(relative.name)
        if entry is None:
            raise NotFoundError(f"{url} does not exist; {self._available(relative)}")
        if entry.get("type") == "directory":
            raise NotFoundError(f"{url} is a folder, not a file")
        return entry

    def _info(self, relative: PurePosixPath) -> dict:
        url = self.describe(relative)
        key = self._key(relative)
        connection = self._connection
        try:
            return _call(
                connection.retry,
                "look up",
                url,
                lambda: connection.filesystem.info(key),
            )
        except _Missing:
            raise NotFoundError(
                f"{url} does not exist ({self._available(relative)})"
            ) from None
        except _Denied as denied:
            raise RemoteError(self._denied_message(relative, denied)) from None

    def _denied_message(self, relative: PurePosixPath, denied: _Denied) -> str:
        message = (
            f"access denied to {self.describe(relative)} ({denied}); give "
            "credentials (AWS_ACCESS_KEY_ID/AWS_PROFILE or storage_options) that "
            "may read it; "
        )
        if self._connection.listings.get(self._key(relative.parent)) is None:
            return message + (
                f"listing {self.describe(relative.parent)} is not allowed, and "
                "then S3 answers a missing object with 'access denied' too: "
                "check the name"
            )
        return message + self._available(relative)

    def local_path(self, relative: PurePosixPath) -> Path:
        """A verified local copy of a remote file, downloaded if not cached.

        Raises
        ------
        NotFoundError
            If the object does not exist; the message lists its folder.
        RemoteError
            If access is denied, or the download fails after the retries.
        """
        relative = _check_relative(relative)
        target = self._cache / relative
        url = self.describe(relative)
        listed = self._listed(relative)
        if _is_cached(target, url, listed):
            return target
        entry = listed if listed is not None else self._entry(relative)
        self._download(relative, target, entry)
        return target

    def _download(self, relative: PurePosixPath, target: Path, entry: dict) -> None:
        url = self.describe(relative)
        key = self._key(relative)
        expected = entry.get("size")
        connection = self._connection
        target.parent.mkdir(parents=True, exist_ok=True)
        # A copy without its record is never trusted, so drop the old record
        # before the copy changes.
        _record_path(target).unlink(missing_ok=True)

        def attempt() -> None:
            handle, name = tempfile.mkstemp(
                prefix=f".{target.name}.", suffix=".part", dir=target.parent
            )
            os.close(handle)
            temporary = Path(name)
            try:
                connection.filesystem.get_file(key, name)
                _verify(temporary, expected, gzipped=target.name.endswith(".gz"))
                os.replace(temporary, target)
            finally:
                temporary.unlink(missing_ok=True)

        log.debug("downloading %s to %s", url, target)
        try:
            _call(connection.retry, "download", url, attempt)
        except _Missing:
            raise NotFoundError(
                f"{url} does not exist (any more); {self._available(relative)}"
            ) from None
        except _Denied as denied:
            raise RemoteError(self._denied_message(relative, denied)) from None
        except _CorruptDownload as corrupt:
            raise CorruptFileError(
                f"{url} was downloaded in full but is not a valid gzip file "
                f"({corrupt}); the object in the store is corrupt: upload it again"
            ) from None
        record = {"url": url, "size": target.stat().st_size, "etag": _etag(entry)}
        write_json(record, _record_path(target))

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


def _is_cached(target: Path, url: str, listed: dict | None) -> bool:
    """Whether the cached copy of ``url`` can be used without a request."""
    try:
        record = json.loads(_record_path(target).read_text(encoding="utf-8"))
        size = target.stat().st_size
    except (OSError, ValueError):
        return False
    if record.get("url") != url or record.get("size") != size:
        return False
    if listed is None:
        return True
    listed_size = listed.get("size")
    listed_etag = _etag(listed)
    return (listed_size is None or listed_size == size) and (
        listed_etag is None or listed_etag == record.get("etag")
    )


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
        self.filesystem, self.root, _ = _open_filesystem(url, storage_options)
        self.retry = retry

    def _put(self, local_dir: Path, relative: PurePosixPath) -> str:
        key = f"{self.root}/{relative.as_posix()}"
        url = self.filesystem.unstrip_protocol(key)
        source = os.fspath(local_dir / relative)
        try:
            _call(
                self.retry,
                "upload to",
                url,
                lambda: self.filesystem.put_file(source, key),
            )
        except _Missing as missing:
            raise NotFoundError(
                f"cannot upload to {url}: the bucket does not exist ({missing})"
            ) from None
        except _Denied as denied:
            raise RemoteError(
                f"access denied writing {url} ({denied}); give credentials "
                "(AWS_ACCESS_KEY_ID/AWS_PROFILE or storage_options) that may "
                "write there"
            ) from None
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
            store = RemoteStore(
                output_url, cache_dir, storage_options=storage_options, retry=retry
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
            "laion_fmri_dataloader.io.remote.upload_tree",
            stage,
            output_url,
        )
        raise
    shutil.rmtree(stage)
