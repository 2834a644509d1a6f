"""Remote faults: which are transient, how they are retried, what each one says.

Every request to an object store goes through :func:`call`, which runs it
under a :class:`RetryPolicy` with tenacity and turns what finally went wrong
into a :class:`RemoteFailure`.  :meth:`RemoteFailure.error` is the one place
where a failure becomes the message a user reads.

Why tenacity and not botocore's retry modes: a download is one request and
then the reading of its body, and a body cut short (or a copy of the wrong
size) has to be fetched again as a whole; botocore retries the request only,
and only for S3, while :func:`call` retries any fsspec file system and knows
how many tries were made, which the messages say.  The retries of s3fs and
botocore are therefore switched off (see :mod:`.remote`): each try is one
request, and the bound is this policy's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import tenacity

from laion_fmri_dataloader.errors import (
    CorruptFileError,
    InvalidParameterError,
    LaionFmriError,
    NotFoundError,
    RemoteError,
)

__all__ = [
    "RETRIES_ENV",
    "RETRY_DELAY_ENV",
    "Action",
    "CorruptDownload",
    "FailureKind",
    "IncompleteDownload",
    "RemoteFailure",
    "RetryPolicy",
    "call",
    "describe_error",
]

log = logging.getLogger("laion_fmri")

#: Environment variable with the number of tries of a remote operation.
RETRIES_ENV = "LAION_FMRI_RETRIES"
#: Environment variable with the first backoff delay, seconds.
RETRY_DELAY_ENV = "LAION_FMRI_RETRY_DELAY"

#: What a request does, as the messages say it ("could not <action> <url>").
Action = Literal["list", "look up", "download", "upload to"]
#: How a remote operation failed for good.
FailureKind = Literal["missing", "denied", "failed", "unreachable", "corrupt"]

_REMOTE_LIBRARIES = ("aiobotocore", "aiohttp", "botocore", "fsspec", "s3fs")

_Result = TypeVar("_Result")


@dataclass(frozen=True)
class RetryPolicy:
    """How a transient network fault is retried: exponential backoff, full jitter.

    The wait before retry ``n`` (0 for the first) is drawn uniformly between
    0 and ``min(base_delay * 2**n, max_delay)`` seconds (the "full jitter" of
    botocore's standard retry mode), so that transfers that failed together
    do not retry together.

    Parameters
    ----------
    tries : int
        Attempts in all, the first one included.
    base_delay : float
        Longest wait before the first retry, seconds; doubled for each next one.
    max_delay : float
        Longest wait between two tries, seconds.

    Examples
    --------
    >>> [RetryPolicy().longest_wait(retry) for retry in range(3)]
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

    def longest_wait(self, retry: int) -> float:
        """The upper bound of the wait before retry ``retry`` (0 for the first),
        seconds."""
        return min(self.base_delay * 2**retry, self.max_delay)

    @property
    def wait(self) -> tenacity.wait.wait_base:
        """The tenacity wait strategy of this policy."""
        return tenacity.wait_random_exponential(
            multiplier=self.base_delay, max=self.max_delay
        )


class IncompleteDownload(Exception):
    """A downloaded copy is shorter or longer than listed; worth another try."""


class CorruptDownload(Exception):
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
        IncompleteDownload,
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


def _classify(error: BaseException) -> FailureKind | Literal["transient"] | None:
    """What a failed try means; None for an error that is not remote (a bug)."""
    if isinstance(error, CorruptDownload):
        return "corrupt"
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


def describe_error(error: BaseException) -> str:
    """One line saying what went wrong: class, message, HTTP status if any."""
    text = " ".join(str(error).split()) or "no message"
    reason = f"{type(error).__name__}: {text}"
    statuses = [_http_status(link) for link in _chain(error)]
    status = next((status for status in statuses if status is not None), None)
    if status is not None and str(status) not in text:
        reason = f"HTTP {status}, {reason}"
    return reason if len(reason) <= 240 else reason[:237] + "..."


# How each action is named when access is denied, and what credentials must allow.
_DENIED_WORDING: dict[Action, tuple[str, str]] = {
    "list": ("listing", "list it"),
    "look up": ("to", "read it"),
    "download": ("to", "read it"),
    "upload to": ("writing", "write there"),
}


@dataclass(eq=False)
class RemoteFailure(Exception):
    """A remote operation that failed for good, before it becomes a message.

    Callers that can do something about a kind of failure (an empty listing
    for a missing folder, the cache for an unreachable store) look at
    :attr:`kind`; every other failure is raised as :meth:`error`.
    """

    kind: FailureKind
    action: Action
    url: str
    reason: str
    tries: int

    def __str__(self) -> str:
        return str(self.error())

    def error(self, context: str = "") -> LaionFmriError:
        """The error a user reads; ``context`` ends it (what the folder holds)."""
        url, reason = self.url, self.reason
        if self.kind == "missing":
            if self.action == "upload to":
                return NotFoundError(
                    f"cannot upload to {url}: the bucket does not exist ({reason})"
                )
            return NotFoundError(f"{url} does not exist{context}")
        if self.kind == "denied":
            preposition, allowed = _DENIED_WORDING[self.action]
            return RemoteError(
                f"access denied {preposition} {url} ({reason}); give credentials "
                "(AWS_ACCESS_KEY_ID/AWS_PROFILE or storage_options) that may "
                f"{allowed}{context}"
            )
        if self.kind == "corrupt":
            return CorruptFileError(
                f"{url} was downloaded in full but is not a valid gzip file "
                f"({reason}); the object in the store is corrupt: upload it again"
            )
        if self.kind == "unreachable":
            return RemoteError(
                f"could not {self.action} {url} after {self.tries} tries "
                f"({reason}); the network or the server failed, try again "
                f"later{context}"
            )
        return RemoteError(f"could not {self.action} {url}: {reason}{context}")


def call(
    policy: RetryPolicy, action: Action, url: str, operation: Callable[[], _Result]
) -> _Result:
    """Run ``operation``, retrying transient faults under ``policy``.

    Raises
    ------
    RemoteFailure
        When the remote end failed for good: a missing object, access
        denied, another error answer, a corrupt download, or ``policy.tries``
        transient faults in a row.  Errors that do not come from the remote
        end (bugs) propagate unchanged.
    """

    def log_retry(state: tenacity.RetryCallState) -> None:
        # tenacity sets the outcome and the next wait before it sleeps.
        log.warning(
            "could not %s %s (%s); retrying in %.2f s (try %d of %d)",
            action,
            url,
            describe_error(state.outcome.exception()),
            state.next_action.sleep,
            state.attempt_number + 1,
            policy.tries,
        )

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.tries),
        wait=policy.wait,
        retry=tenacity.retry_if_exception(
            lambda error: _classify(error) == "transient"
        ),
        before_sleep=log_retry,
        reraise=True,
    )
    try:
        return retrying(operation)
    except Exception as error:
        kind = _classify(error)
        if kind is None:
            raise
        raise RemoteFailure(
            "unreachable" if kind == "transient" else kind,
            action,
            url,
            describe_error(error),
            policy.tries,
        ) from error
