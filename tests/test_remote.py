"""Remote datasets: a real S3 server (moto) behind a counting, faulty proxy.

Every request goes 127.0.0.1 -> proxy -> moto (see ``_s3``), both started for
this module and stopped at its end.  The proxy records each request (method,
path, status, signed or not) and injects faults on demand: 503 answers, 403
and 404 for one key, and a connection closed halfway through a body.
"""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

import fsspec
import pytest

from _s3 import BUCKET, GLM_URL, URL, same_image
from laion_fmri_dataloader import cli
from laion_fmri_dataloader.dataset import LAIONfMRIDataset
from laion_fmri_dataloader.errors import (
    CorruptFileError,
    InvalidLabelError,
    NotFoundError,
    RemoteError,
)
from laion_fmri_dataloader.io.remote import RemoteStore, _filesystem_options
from laion_fmri_dataloader.io.retry import RETRY_DELAY_ENV, RetryPolicy
from laion_fmri_dataloader.io.upload import staged_output, upload_tree

pytestmark = pytest.mark.timeout(60)


def test_every_loader_method_matches_the_local_folder(s3, cache):
    remote = LAIONfMRIDataset(URL)
    local = LAIONfMRIDataset(s3.tree)
    assert remote.root == GLM_URL
    assert remote.subjects == local.subjects == ["sub-01", "sub-02"]
    assert remote.contrasts() == local.contrasts()
    assert remote.contrasts("sub-02") == local.contrasts("sub-02")
    assert len(remote.contrasts()) == 6
    same_image(
        remote.load_first_level_contrast(
            subject="sub-01", task="experiment", contrast="faceVsBaseline"
        ),
        local.load_first_level_contrast(subject="sub-01", contrast="faceVsBaseline"),
    )
    remote_all = remote.load_all_contrasts("sub-02", stat_type="effect")
    local_all = local.load_all_contrasts("sub-02", stat_type="effect")
    assert list(remote_all) == list(local_all) == remote.contrasts("sub-02")
    for name, image in remote_all.items():
        same_image(image, local_all[name])
    for correction in (None, "fdr", "fwe"):
        same_image(
            remote.load_group_level_contrast("faceVsScene", correction=correction),
            local.load_group_level_contrast("faceVsScene", correction=correction),
        )
    same_image(
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
    same_image(first, second)
    assert len(s3.proxy.requests) == n_requests

    # A new session lists folders again, but downloads nothing.
    fresh = LAIONfMRIDataset(URL)
    same_image(fresh.load_group_level_contrast("faceVsObject", correction="fdr"), first)
    later = s3.proxy.requests[n_requests:]
    assert later and all("list-type=2" in r.path for r in later)

    # A cached copy whose size disagrees with its record is downloaded again.
    path = fresh.get_path(None, contrast="faceVsObject", correction="fdr")
    path.write_bytes(path.read_bytes()[:100])
    same_image(fresh.load_group_level_contrast("faceVsObject", correction="fdr"), first)
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
    same_image(
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


def test_retry_waits_are_jittered_below_the_exponential_bounds():
    # The bounds are the fixed delays of the hand-written retries this replaced.
    policy = RetryPolicy(base_delay=1.0, max_delay=3.0)
    bounds = [policy.longest_wait(retry) for retry in range(4)]
    assert bounds == [1.0, 2.0, 3.0, 3.0]
    for retry, bound in enumerate(bounds):
        state = SimpleNamespace(attempt_number=retry + 1)
        waits = [policy.wait(state) for _ in range(2000)]
        assert 0 <= min(waits) and max(waits) <= bound
        # Full jitter: spread over the whole window, so that transfers that
        # failed together do not retry together.
        assert min(waits) < 0.05 * bound and max(waits) > 0.95 * bound
        assert len(set(waits)) == len(waits)


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
    same_image(
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
