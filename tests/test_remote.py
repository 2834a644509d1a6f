"""Remote datasets: a real S3 server (moto) behind a counting, faulty proxy.

Every request goes 127.0.0.1 -> proxy -> moto, both started here and stopped
at the end of the module.  The proxy records each request (method, path,
status, signed or not) and injects faults on demand: 503 answers, 403 and 404
for one key, and a connection closed halfway through a body.
"""

from __future__ import annotations

import functools
import gzip
import http.client
import json
import logging
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath

import fsspec
import numpy as np
import pytest
from moto.server import ThreadedMotoServer

from _trees import write_derivative_tree
from laion_fmri_dataloader import cli
from laion_fmri_dataloader.dataset import LAIONfMRIDataset
from laion_fmri_dataloader.errors import (
    CorruptFileError,
    InvalidLabelError,
    NotFoundError,
    RemoteError,
)
from laion_fmri_dataloader.io.remote import (
    CACHE_ENV,
    RETRY_DELAY_ENV,
    RemoteStore,
    RetryPolicy,
    _filesystem_options,
    staged_output,
    upload_tree,
)

pytestmark = pytest.mark.timeout(60)

BUCKET = "laion"
URL = f"s3://{BUCKET}/fmri"
GLM_URL = f"{URL}/derivatives/glm"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


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
    ``truncate_times`` (how many times).
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.lock = threading.Lock()
        self.requests: list[Request] = []
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
        with self.lock:
            self.requests.clear()
            self.fail_next = 0
            self.deny = self.missing = self.truncate = None
            self.truncate_times = 1_000

    def stop(self) -> None:
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
            if (
                method == "GET"
                and self.truncate
                and self.truncate in path
                and self.truncate_times > 0
            ):
                self.truncate_times -= 1
                return "truncate"
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
        if fault == "truncate":
            # The server goes away mid-body: half the bytes, then a closed socket.
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _handle


@dataclass
class S3:
    """The tests' server: its proxy, the local copy of what the bucket holds,
    and the cache folder named after its endpoint."""

    proxy: FaultyProxy
    tree: Path
    endpoint_folder: str


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto behind the proxy, with a derivative tree uploaded by upload_tree."""
    tree = write_derivative_tree(tmp_path_factory.mktemp("remote-tree"))
    with pytest.MonkeyPatch.context() as env:
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        try:
            proxy = FaultyProxy(moto.get_host_and_port()[1])
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
                connection = http.client.HTTPConnection(
                    "127.0.0.1", moto.get_host_and_port()[1]
                )
                connection.request("PUT", f"/{BUCKET}")
                assert connection.getresponse().status == 200
                connection.close()
                upload_tree(tree, URL)
                endpoint_folder = proxy.url.removeprefix("http://").replace(":", "_")
                yield S3(proxy, tree, endpoint_folder)
            finally:
                proxy.stop()
        finally:
            moto.stop()


@pytest.fixture
def cache(s3, tmp_path, monkeypatch):
    """A fresh cache root per test, and a proxy without faults or records."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    s3.proxy.reset()
    return folder


def _same_image(first, second) -> None:
    np.testing.assert_array_equal(first.get_fdata(), second.get_fdata())
    np.testing.assert_array_equal(first.affine, second.affine)


def test_every_loader_method_matches_the_local_folder(s3, cache):
    remote = LAIONfMRIDataset(URL)
    local = LAIONfMRIDataset(s3.tree)
    assert remote.root == GLM_URL
    assert remote.subjects == local.subjects == ["sub-01", "sub-02"]
    assert remote.contrasts() == local.contrasts()
    assert remote.contrasts("sub-02") == local.contrasts("sub-02")
    assert len(remote.contrasts()) == 6
    _same_image(
        remote.load_first_level_contrast(
            subject="sub-01", task="experiment", contrast="faceVsBaseline"
        ),
        local.load_first_level_contrast(subject="sub-01", contrast="faceVsBaseline"),
    )
    remote_all = remote.load_all_contrasts("sub-02", stat_type="effect")
    local_all = local.load_all_contrasts("sub-02", stat_type="effect")
    assert list(remote_all) == list(local_all) == remote.contrasts("sub-02")
    for name, image in remote_all.items():
        _same_image(image, local_all[name])
    for correction in (None, "fdr", "fwe"):
        _same_image(
            remote.load_group_level_contrast("faceVsScene", correction=correction),
            local.load_group_level_contrast("faceVsScene", correction=correction),
        )
    _same_image(
        remote.load_group_level_contrast("faceVsScene", stat_type="p"),
        local.load_group_level_contrast("faceVsScene", stat_type="p"),
    )
    assert remote.load_metadata(
        "sub-01", contrast="faceVsScene", stat_type="t"
    ) == local.load_metadata("sub-01", contrast="faceVsScene", stat_type="t")
    group_metadata = remote.load_metadata(contrast="faceVsScene", correction="fwe")
    assert group_metadata == local.load_metadata(
        contrast="faceVsScene", correction="fwe"
    )
    assert group_metadata.Correction.Method == "fwe"
    png = remote.load_design_matrix_image("sub-01")
    assert png.read_bytes() == local.load_design_matrix_image("sub-01").read_bytes()

    relative = "first_level/sub-02/sub-02_task-experiment_contrast-sceneVsBaseline"
    path = remote.get_path("sub-02", contrast="sceneVsBaseline", stat_type="variance")
    expected = cache / s3.endpoint_folder / BUCKET / "fmri" / "derivatives" / "glm"
    assert path == expected / f"{relative}_stat-variance.nii.gz"
    record = json.loads((path.parent / f".{path.name}.remote.json").read_text())
    assert record["url"] == f"{GLM_URL}/{relative}_stat-variance.nii.gz"
    assert record["size"] == path.stat().st_size
    assert record["etag"]
    assert not list(cache.rglob("*.part"))
    # Only what was asked for was downloaded, once: 12 maps (1 + 6 effects +
    # 4 group + 1 variance), 2 sidecars (without their maps) and the figure.
    downloads = [
        r for r in s3.proxy.requests if r.method == "GET" and "list-type" not in r.path
    ]
    assert len(downloads) == len({r.path for r in downloads}) == 12 + 2 + 1
    assert all(r.signed for r in s3.proxy.requests)


def test_cli_info_reads_the_bucket(s3, cache, capsys):
    assert cli.main(["info", URL]) == 0
    remote_lines = capsys.readouterr().out.splitlines()
    assert cli.main(["info", str(s3.tree)]) == 0
    local_lines = capsys.readouterr().out.splitlines()
    assert remote_lines[0] == f"GLM derivatives in {GLM_URL}"
    assert remote_lines[1:] == local_lines[1:]
    assert "subjects (2): sub-01, sub-02" in remote_lines
    assert "missing: nothing" in remote_lines


def test_a_second_load_is_served_from_the_cache(s3, cache):
    dataset = LAIONfMRIDataset(URL)
    name = "group_contrast-faceVsObject_fdr-corrected.nii.gz"
    first = dataset.load_group_level_contrast("faceVsObject", correction="fdr")
    assert len(s3.proxy.matching("GET", name)) == 1
    n_requests = len(s3.proxy.requests)

    second = dataset.load_group_level_contrast("faceVsObject", correction="fdr")
    _same_image(first, second)
    assert len(s3.proxy.requests) == n_requests

    # A new session lists folders again, but downloads nothing.
    fresh = LAIONfMRIDataset(URL)
    _same_image(
        fresh.load_group_level_contrast("faceVsObject", correction="fdr"), first
    )
    later = s3.proxy.requests[n_requests:]
    assert later and all("list-type=2" in r.path for r in later)

    # A cached copy whose size disagrees with its record is downloaded again.
    path = fresh.get_path(None, contrast="faceVsObject", correction="fdr")
    path.write_bytes(path.read_bytes()[:100])
    _same_image(
        fresh.load_group_level_contrast("faceVsObject", correction="fdr"), first
    )
    assert len(s3.proxy.matching("GET", name)) == 2


def test_cache_folder_comes_from_the_argument_first(s3, cache, tmp_path):
    chosen = tmp_path / "chosen"
    dataset = LAIONfMRIDataset(URL, cache_dir=chosen)
    path = dataset.get_path("sub-01")
    assert path.is_relative_to(chosen / s3.endpoint_folder / BUCKET / "fmri")
    assert not cache.exists()


def test_503_answers_are_retried_then_the_map_loads(s3, cache):
    s3.proxy.fail_next = 3
    dataset = LAIONfMRIDataset(URL)
    image = dataset.load_first_level_contrast("sub-01", contrast="objectVsBaseline")
    local = LAIONfMRIDataset(s3.tree)
    _same_image(
        image,
        local.load_first_level_contrast("sub-01", "experiment", "objectVsBaseline"),
    )
    statuses = [r.status for r in s3.proxy.requests]
    assert statuses[:3] == [503, 503, 503]
    assert set(statuses[3:]) == {200}


def test_a_server_that_keeps_failing_is_reported_after_bounded_tries(s3, cache):
    s3.proxy.fail_next = 100
    with pytest.raises(
        RemoteError,
        match=rf"could not list {URL}/derivatives after 4 tries \(HTTP 503, ",
    ):
        LAIONfMRIDataset(URL)
    # One request per try: the retries of s3fs and botocore are off.
    assert len(s3.proxy.requests) == 4


def test_retry_policy_from_the_environment(monkeypatch):
    monkeypatch.setenv("LAION_FMRI_RETRIES", "2")
    monkeypatch.setenv(RETRY_DELAY_ENV, "0.5")
    assert RetryPolicy.from_env() == RetryPolicy(tries=2, base_delay=0.5)
    assert [RetryPolicy(base_delay=1.0, max_delay=3.0).delay(i) for i in range(4)] == [
        1.0,
        2.0,
        3.0,
        3.0,
    ]


def test_a_missing_key_lists_the_folder_with_a_suggestion(s3, cache):
    store = RemoteStore(URL)
    wrong = PurePosixPath(
        "derivatives/glm/group_level/group_contrast-faceVsScene_stat-Z.nii.gz"
    )
    with pytest.raises(
        NotFoundError,
        match=rf"{GLM_URL}/group_level/group_contrast-faceVsScene_stat-Z.nii.gz does "
        r"not exist; .*did you mean 'group_contrast-faceVsScene_stat-z.nii.gz'\? "
        "Available: ",
    ):
        store.local_path(wrong)

    for url in (f"s3://{BUCKET}/nothing", "s3://no-such-bucket/fmri"):
        with pytest.raises(NotFoundError, match=f"{url} holds no GLM derivatives"):
            LAIONfMRIDataset(url)

    dataset = LAIONfMRIDataset(URL)
    with pytest.raises(NotFoundError, match="did you mean 'faceVsBaseline'"):
        dataset.load_first_level_contrast("sub-01", contrast="faceVsbaseline")

    # A key deleted after its folder was listed: the server's 404 says so.
    name = "group_contrast-sceneVsObject_stat-t.nii.gz"
    s3.proxy.missing = name
    with pytest.raises(NotFoundError, match=rf"{name} does not exist \(any more\)"):
        dataset.load_group_level_contrast("sceneVsObject", stat_type="t")
    assert len(s3.proxy.matching("GET", name)) == 1


def test_access_denied_says_so_and_is_not_retried(s3, cache):
    name = "sub-02_task-experiment_contrast-faceVsBaseline_stat-z.nii.gz"
    s3.proxy.deny = name
    dataset = LAIONfMRIDataset(URL)
    with pytest.raises(
        RemoteError, match=rf"access denied to {GLM_URL}/first_level/sub-02/{name}"
    ) as caught:
        dataset.load_first_level_contrast("sub-02")
    assert isinstance(caught.value, OSError)
    assert "\n" not in str(caught.value)
    assert len(s3.proxy.matching("GET", name)) == 1

    s3.proxy.deny = "list-type=2"
    with pytest.raises(RemoteError, match=rf"access denied listing {URL}/derivatives "):
        LAIONfMRIDataset(URL)


def test_objects_load_where_listing_is_not_allowed(s3, cache):
    # Some public buckets serve objects but refuse to list them.
    s3.proxy.deny = "list-type=2"
    store = RemoteStore(GLM_URL)
    name = "group_contrast-faceVsScene_stat-z.json"
    path = store.local_path(PurePosixPath("group_level") / name)
    assert (
        path.read_bytes()
        == (s3.tree / "derivatives/glm/group_level" / name).read_bytes()
    )
    assert [r.method for r in s3.proxy.requests if name in r.path] == ["HEAD", "GET"]
    with pytest.raises(RemoteError, match=r"access denied listing"):
        store.listdir(PurePosixPath("group_level"))
    with pytest.raises(
        RemoteError,
        match=r"access denied to .*/group_contrast-nothing.json .*"
        r"listing .*/group_level is not allowed, .* check the name",
    ):
        store.local_path(PurePosixPath("group_level/group_contrast-nothing.json"))


def test_without_credentials_requests_are_anonymous(s3, cache, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    dataset = LAIONfMRIDataset(URL)
    assert dataset.subjects == ["sub-01", "sub-02"]
    # moto lists a private bucket anonymously but refuses to hand out objects.
    with pytest.raises(RemoteError, match=r"access denied to .*HTTP 403"):
        dataset.load_first_level_contrast("sub-01")
    assert s3.proxy.requests and not any(r.signed for r in s3.proxy.requests)


def test_s3_options_defaults_and_overrides(monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    options, endpoint = _filesystem_options("s3://bucket/prefix", {})
    assert options["anon"] is True
    assert options["config_kwargs"]["retries"] == {"total_max_attempts": 1}
    assert endpoint == "http://127.0.0.1:9"
    options, endpoint = _filesystem_options(
        "s3://bucket",
        {"key": "k", "secret": "s", "endpoint_url": "http://127.0.0.1:8"},
    )
    assert "anon" not in options
    assert endpoint == "http://127.0.0.1:8"
    monkeypatch.setenv("AWS_PROFILE", "lab")
    assert _filesystem_options("s3://bucket", {})[0]["anon"] is False
    options, _ = _filesystem_options("memory://bucket", {})
    assert "anon" not in options


def test_a_connection_dropped_mid_download_is_retried(s3, cache):
    name = "sub-01_task-experiment_contrast-sceneVsBaseline_stat-t.nii.gz"
    s3.proxy.truncate = name
    s3.proxy.truncate_times = 1
    dataset = LAIONfMRIDataset(URL)
    image = dataset.load_first_level_contrast(
        "sub-01", contrast="sceneVsBaseline", stat_type="t"
    )
    _same_image(
        image,
        LAIONfMRIDataset(s3.tree).load_first_level_contrast(
            "sub-01", "experiment", "sceneVsBaseline", "t"
        ),
    )
    assert len(s3.proxy.matching("GET", name)) == 2


def test_a_server_gone_mid_download_leaves_no_partial_file(s3, cache):
    name = "sub-01_task-experiment_contrast-sceneVsBaseline_stat-t.nii.gz"
    s3.proxy.truncate = name
    dataset = LAIONfMRIDataset(URL)
    with pytest.raises(
        RemoteError,
        match=rf"could not download {GLM_URL}/first_level/sub-01/{name} after 4 tries",
    ):
        dataset.load_first_level_contrast(
            "sub-01", contrast="sceneVsBaseline", stat_type="t"
        )
    assert len(s3.proxy.matching("GET", name)) == 4
    folder = cache / s3.endpoint_folder / BUCKET / "fmri/derivatives/glm/first_level"
    assert sorted(path.name for path in folder.rglob("*")) == ["sub-01"]

    s3.proxy.truncate = None
    dataset.load_first_level_contrast(
        "sub-01", contrast="sceneVsBaseline", stat_type="t"
    )
    assert (folder / "sub-01" / name).is_file()


def test_a_corrupt_object_is_reported_at_once(s3, cache, tmp_path):
    local = tmp_path / "broken"
    local.mkdir()
    valid = gzip.compress(b"0123456789" * 100)
    (local / "map.nii.gz").write_bytes(valid[:-8] + b"\0" * 8)  # CRC and size zeroed
    upload_tree(local, f"s3://{BUCKET}/broken")
    store = RemoteStore(f"s3://{BUCKET}/broken")
    with pytest.raises(
        CorruptFileError, match=rf"s3://{BUCKET}/broken/map.nii.gz was downloaded"
    ):
        store.local_path(PurePosixPath("map.nii.gz"))
    assert len(s3.proxy.matching("GET", "/broken/map.nii.gz")) == 1
    assert not list(store.cache_folder.iterdir())


def test_upload_tree_puts_maps_before_their_sidecars(s3, cache, tmp_path):
    local = tmp_path / "sub-09"
    local.mkdir()
    for name in ("b_stat-z", "a_stat-z"):
        (local / f"{name}.nii.gz").write_bytes(gzip.compress(name.encode()))
        (local / f"{name}.json").write_text("{}")
    (local / ".a_stat-z.json.tmp").write_text("half written")
    urls = upload_tree(local, f"s3://{BUCKET}/uploads/sub-09")
    assert urls == [
        f"s3://{BUCKET}/uploads/sub-09/{name}"
        for name in (
            "a_stat-z.nii.gz",
            "b_stat-z.nii.gz",
            "a_stat-z.json",
            "b_stat-z.json",
        )
    ]
    puts = [r.path.split("?")[0] for r in s3.proxy.requests if r.method == "PUT"]
    expected = [f"/{BUCKET}/uploads/sub-09/{url.rsplit('/', 1)[1]}" for url in urls]
    # Two at a time in flight, but every map is in before any sidecar is sent.
    assert set(puts[:2]) == set(expected[:2])
    assert set(puts[2:]) == set(expected[2:])
    store = RemoteStore(f"s3://{BUCKET}/uploads")
    assert store.listdir(PurePosixPath("sub-09")) == sorted(
        url.rsplit("/", 1)[1] for url in urls
    )
    assert (
        store.local_path(PurePosixPath("sub-09/b_stat-z.nii.gz")).read_bytes()
        == (local / "b_stat-z.nii.gz").read_bytes()
    )

    with pytest.raises(
        NotFoundError,
        match=r"s3://no-such-bucket/x/a_stat-z.nii.gz: the bucket does not exist",
    ):
        upload_tree(local, "s3://no-such-bucket/x")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def test_staged_output_uploads_subjects_then_the_rest(s3, cache):
    url = f"s3://{BUCKET}/staged/derivatives/glm"
    with staged_output(url) as stage:
        _write(stage / "dataset_description.json", "{}")
        for subject in ("02", "01"):
            _write(stage / f"first_level/sub-{subject}/sub-{subject}_stat-z.json", "{}")
            _write(
                stage / f"first_level/sub-{subject}/sub-{subject}_stat-z.nii.gz",
                subject,
            )
    assert not stage.exists()
    puts = [
        r.path.removeprefix(f"/{BUCKET}/staged/derivatives/glm/")
        for r in s3.proxy.requests
        if r.method == "PUT"
    ]
    assert puts == [
        "first_level/sub-01/sub-01_stat-z.nii.gz",
        "first_level/sub-01/sub-01_stat-z.json",
        "first_level/sub-02/sub-02_stat-z.nii.gz",
        "first_level/sub-02/sub-02_stat-z.json",
        "dataset_description.json",
    ]

    s3.proxy.reset()
    with (
        pytest.raises(RuntimeError, match="pipeline crashed"),
        staged_output(url) as stage,
    ):
        _write(stage / "first_level/sub-03/sub-03_stat-z.nii.gz", "03")
        raise RuntimeError("pipeline crashed")
    assert stage.is_dir()
    assert not [r for r in s3.proxy.requests if r.method == "PUT"]
    with pytest.raises(RuntimeError), staged_output(url) as stage:
        _write(stage / "dataset_description.json", "{}")
        raise RuntimeError("bad input, nothing made")
    assert not stage.exists()

    # The group level reads first-level maps: fetched into the stage, not re-sent.
    s3.proxy.reset()
    with staged_output(url, fetch=("first_level",)) as stage:
        assert (
            gzip.decompress(
                (stage / "first_level/sub-02/sub-02_stat-z.nii.gz").read_bytes()
            )
            == b"02"
        )
        assert sorted(p.name for p in (stage / "first_level").iterdir()) == [
            "sub-01",
            "sub-02",
        ]
        _write(stage / "group_level/group_stat-z.nii.gz", "group")
    puts = [r.path for r in s3.proxy.requests if r.method == "PUT"]
    assert puts == [f"/{BUCKET}/staged/derivatives/glm/group_level/group_stat-z.nii.gz"]


def test_any_fsspec_url_works(tmp_path):
    local = tmp_path / "tree"
    _write(local / "first_level/sub-01/x.nii.gz", "x")
    _write(local / "first_level/sub-01/x.json", "{}")
    url = "memory://laion-remote-test/glm"
    try:
        upload_tree(local, url)
        store = RemoteStore(url, cache_dir=tmp_path / "cache")
        assert store.listdir(PurePosixPath("first_level/sub-01")) == [
            "x.json",
            "x.nii.gz",
        ]
        first_level = store.child(PurePosixPath("first_level"))
        assert first_level.exists(PurePosixPath("sub-01/x.json"))
        assert not first_level.exists(PurePosixPath("sub-02/x.json"))
        path = first_level.local_path(PurePosixPath("sub-01/x.nii.gz"))
        assert (
            path == tmp_path / "cache/laion-remote-test/glm/first_level/sub-01/x.nii.gz"
        )
        assert gzip.decompress(path.read_bytes()) == b"x"
        with pytest.raises(InvalidLabelError, match="stay inside the dataset"):
            store.local_path(PurePosixPath("../outside.nii.gz"))
    finally:
        fsspec.filesystem("memory").rm("/laion-remote-test", recursive=True)
    with pytest.raises(InvalidLabelError, match="names no bucket"):
        RemoteStore("s3://")


@pytest.mark.slow
def test_glm_writes_to_the_bucket_and_the_loader_reads_it(s3, cache, tmp_path, caplog):
    bids = tmp_path / "bids"
    simulate = ["simulate", str(bids), "--subjects", "3", "--runs", "1"]
    assert cli.main([*simulate, "--n-volumes", "40", "--resolution", "8"]) == 0
    output = f"s3://{BUCKET}/pipeline/derivatives/glm"
    assert (
        cli.main(["glm", str(bids), output, "participant", "--scheduler", "none"]) == 0
    )
    puts = [
        r.path.removeprefix(f"/{BUCKET}/pipeline/derivatives/glm/")
        for r in s3.proxy.requests
        if r.method == "PUT"
    ]
    assert puts[-1] == "dataset_description.json"
    # One subject after the other, each map before its sidecar.
    subjects = [path.split("/")[1] for path in puts[:-1]]
    assert subjects == sorted(subjects)
    assert set(subjects) == {"sub-01", "sub-02", "sub-03"}
    for position, path in enumerate(puts):
        if path.endswith(".nii.gz"):
            assert puts.index(path.replace(".nii.gz", ".json")) > position

    # A rerun skips the complete subjects: their outputs are fetched into the
    # stage, found complete, and not sent again.
    s3.proxy.reset()
    participant = ["glm", str(bids), output, "participant", "--scheduler", "none"]
    with caplog.at_level(logging.INFO, logger="laion_fmri"):
        assert cli.main(participant) == 0
    assert "0 done, 3 skipped" in caplog.text
    puts = [r.path for r in s3.proxy.requests if r.method == "PUT"]
    assert not [path for path in puts if "/first_level/" in path]

    s3.proxy.reset()
    group = ["glm", str(bids), output, "group", "--scheduler", "none", "--no-reports"]
    assert cli.main([*group, "--n-perm", "100"]) == 0
    puts = [r.path for r in s3.proxy.requests if r.method == "PUT"]
    assert puts and all("/group_level/" in path for path in puts)

    dataset = LAIONfMRIDataset(f"s3://{BUCKET}/pipeline")
    assert dataset.subjects == ["sub-01", "sub-02", "sub-03"]
    assert dataset.corrections("faceVsBaseline") == ["fdr", "fwe"]
    corrected = dataset.load_group_level_contrast("faceVsBaseline", correction="fdr")
    assert corrected.shape == dataset.load_first_level_contrast("sub-03").shape
    assert not list((cache / "staging").iterdir())
