"""A real S3 server (moto) behind a counting, faulty proxy, for remote tests.

Every request goes 127.0.0.1 -> proxy -> moto, both started by
:func:`running_s3` and stopped when it ends.  The proxy records each request
(method, path, status, signed or not) and injects faults on demand: 503
answers, 403 and 404 for one key, a connection closed halfway through a
body, and a body that stalls halfway (for a client to be killed mid-download).
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from moto.server import ThreadedMotoServer

from laion_fmri_dataloader.io.cache import CACHE_ENV
from laion_fmri_dataloader.io.retry import RETRY_DELAY_ENV
from laion_fmri_dataloader.io.upload import upload_tree
from laion_fmri_dataloader.simulate.data_gen import write_derivative_tree

BUCKET = "laion"
URL = f"s3://{BUCKET}/fmri"
GLM_URL = f"{URL}/derivatives/glm"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}
# Longest time a stalled body is held before the proxy gives up on it, seconds.
_STALL_LIMIT = 30.0


@dataclass
class Request:
    """One request as the proxy saw it."""

    method: str
    path: str
    status: int
    signed: bool


class FaultyProxy:
    """A threaded HTTP proxy to moto that counts requests and injects faults.

    Attributes set by tests (all reset by :meth:`reset`): ``fail_next`` (answer
    that many next requests with 503), ``deny`` / ``missing`` (a substring of
    the request path answered with 403 / 404), ``truncate`` (a substring
    whose GET body is cut in half and the connection closed) and
    ``truncate_times`` (how many times), ``stall`` (a substring whose GET body
    stops halfway until :meth:`release` or :meth:`reset`; ``stalled`` is set
    once it does) and ``stall_times``.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.lock = threading.Lock()
        self.requests: list[Request] = []
        self.released = threading.Event()
        self.reset()
        handler = functools.partial(_ProxyHandler, self)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}
        )
        self.thread.start()

    def reset(self) -> None:
        self.release()
        with self.lock:
            self.requests.clear()
            self.fail_next = 0
            self.deny = self.missing = self.truncate = self.stall = None
            self.truncate_times = self.stall_times = 1_000
            self.stalled = threading.Event()
            self.released = threading.Event()

    def release(self) -> None:
        """Let stalled bodies end (cut short, as a dying server would)."""
        self.released.set()

    def stop(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def fault(self, method: str, path: str) -> str | None:
        with self.lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return "unavailable"
            if self.deny and self.deny in path:
                return "denied"
            if self.missing and self.missing in path:
                return "missing"
            if method != "GET":
                return None
            if self.truncate and self.truncate in path and self.truncate_times > 0:
                self.truncate_times -= 1
                return "truncate"
            if self.stall and self.stall in path and self.stall_times > 0:
                self.stall_times -= 1
                return "stall"
        return None

    def record(self, request: Request) -> None:
        with self.lock:
            self.requests.append(request)

    def matching(self, method: str, text: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.method == method and text in r.path]


_ERRORS = {
    "unavailable": (503, "ServiceUnavailable", "injected fault"),
    "denied": (403, "AccessDenied", "Access Denied"),
    "missing": (404, "NoSuchKey", "The specified key does not exist."),
}


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def __init__(self, proxy: FaultyProxy, *args) -> None:
        self.proxy = proxy
        super().__init__(*args)

    def log_message(self, format, *args) -> None:
        """Quiet: the tests read the recorded requests instead."""

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        body = self._read_body()
        fault = self.proxy.fault(self.command, self.path)
        if fault in _ERRORS:
            status, code, message = _ERRORS[fault]
            payload = (
                f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                f"<Message>{message}</Message><RequestId>proxy</RequestId></Error>"
            ).encode()
            headers = [("Content-Type", "application/xml")]
        else:
            upstream = http.client.HTTPConnection(
                "127.0.0.1", self.proxy.upstream_port, timeout=20
            )
            try:
                forwarded = {
                    name: value
                    for name, value in self.headers.items()
                    if name.lower() not in _HOP_BY_HOP
                }
                forwarded["Content-Length"] = str(len(body))
                upstream.request(self.command, self.path, body, forwarded)
                response = upstream.getresponse()
                status, payload = response.status, response.read()
                headers = [
                    (name, value)
                    for name, value in response.getheaders()
                    if name.lower() not in _HOP_BY_HOP
                ]
                length = response.getheader("Content-Length")
            finally:
                upstream.close()
        self.proxy.record(
            Request(self.command, self.path, status, "Authorization" in self.headers)
        )
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if self.command == "HEAD":
            self.send_header("Content-Length", length if fault is None else "0")
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if fault in ("truncate", "stall"):
            # The server goes away mid-body: half the bytes, then a closed
            # socket, at once or once released.
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            if fault == "stall":
                released = self.proxy.released
                self.proxy.stalled.set()
                released.wait(timeout=_STALL_LIMIT)
            self.close_connection = True
            return
        self.wfile.write(payload)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _handle


@dataclass
class S3:
    """The tests' server: its proxy, the local copy of what the bucket holds,
    the cache folder named after its endpoint, and moto's own port."""

    proxy: FaultyProxy
    tree: Path
    endpoint_folder: str
    moto_port: int


def endpoint_folder(proxy: FaultyProxy) -> str:
    """The cache's folder name of a proxy's endpoint."""
    return proxy.url.removeprefix("http://").replace(":", "_")


@contextlib.contextmanager
def running_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    """moto behind the proxy, with a derivative tree uploaded by upload_tree,
    and the environment (credentials, endpoint, fast backoff) pointing at it."""
    tree = write_derivative_tree(tmp_path_factory.mktemp("remote-tree"))
    with pytest.MonkeyPatch.context() as env:
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        try:
            moto_port = moto.get_host_and_port()[1]
            proxy = FaultyProxy(moto_port)
            try:
                for name, value in {
                    "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_ENDPOINT_URL": proxy.url,
                    # Fast backoff: the number of tries is the default one.
                    RETRY_DELAY_ENV: "0.01",
                }.items():
                    env.setenv(name, value)
                for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
                    env.delenv(name, raising=False)
                env.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("upload-cache")))
                connection = http.client.HTTPConnection("127.0.0.1", moto_port)
                connection.request("PUT", f"/{BUCKET}")
                assert connection.getresponse().status == 200
                connection.close()
                upload_tree(tree, URL)
                yield S3(proxy, tree, endpoint_folder(proxy), moto_port)
            finally:
                proxy.stop()
        finally:
            moto.stop()


def same_image(first, second) -> None:
    """Assert that two images hold the same data and affine."""
    np.testing.assert_array_equal(first.get_fdata(), second.get_fdata())
    np.testing.assert_array_equal(first.affine, second.affine)
