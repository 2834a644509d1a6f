"""Faults of the remote cache: killed clients, damaged copies, an unreachable store.

The store is a real S3 server (moto) behind the fault-injecting proxy of
``_s3``; clients to be killed run in their own processes and get SIGKILL
while a download is in flight (the proxy holds the body halfway).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path, PurePosixPath

import pytest

from _s3 import (
    BUCKET,
    GLM_URL,
    URL,
    FaultyProxy,
    endpoint_folder,
    same_image,
)
from laion_fmri_dataloader.dataset import LAIONfMRIDataset
from laion_fmri_dataloader.errors import CorruptFileError, RemoteError
from laion_fmri_dataloader.io.cache import _lock
from laion_fmri_dataloader.io.remote import RemoteStore
from laion_fmri_dataloader.io.upload import staged_output, upload_tree

pytestmark = pytest.mark.timeout(120)

Z_MAP = "sub-01_task-experiment_contrast-faceVsBaseline_stat-z.nii.gz"
T_MAP = "sub-01_task-experiment_contrast-faceVsBaseline_stat-t.nii.gz"


def _glm_cache(cache: Path, s3) -> Path:
    return cache / s3.endpoint_folder / BUCKET / "fmri/derivatives/glm"


def _local(s3) -> LAIONfMRIDataset:
    return LAIONfMRIDataset(s3.tree)


def _client(code: str, **options) -> subprocess.Popen:
    """A Python process that runs ``code`` with this test's environment."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], env=dict(os.environ), **options
    )


def _load_in_a_client(subject: str = "sub-01", stat_type: str = "z") -> str:
    return f"""
        from laion_fmri_dataloader.dataset import LAIONfMRIDataset
        LAIONfMRIDataset({URL!r}).load_first_level_contrast(
            {subject!r}, stat_type={stat_type!r}
        )
    """


def _parts(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.part"))


def _wait_for_stall(s3, client: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while not s3.proxy.stalled.wait(timeout=0.1):
        assert client.poll() is None, "the client ended before its download stalled"
        assert time.monotonic() < deadline, "the download never started"


@pytest.mark.slow
def test_a_client_killed_mid_download_leaves_a_part_the_next_load_removes(s3, cache):
    folder = _glm_cache(cache, s3) / "first_level/sub-01"
    s3.proxy.stall = Z_MAP
    client = _client(_load_in_a_client())
    try:
        _wait_for_stall(s3, client)
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait(timeout=30)
    [leftover] = _parts(folder)
    assert leftover.name.startswith(f".{Z_MAP}.")
    assert not (folder / Z_MAP).exists()

    s3.proxy.reset()
    image = LAIONfMRIDataset(URL).load_first_level_contrast("sub-01")
    same_image(image, _local(s3).load_first_level_contrast("sub-01"))
    assert not _parts(folder)
    assert len(s3.proxy.matching("GET", Z_MAP)) == 1


@pytest.mark.slow
def test_a_live_download_keeps_its_part_while_another_client_cleans(s3, cache):
    folder = _glm_cache(cache, s3) / "first_level/sub-01"
    # The other file must not share the stalled one's lock (1 in 256 do).
    locks = cache / ".locks"
    other = next(
        stat_type
        for stat_type in ("t", "effect", "variance")
        if _lock(locks, folder / Z_MAP).lock_file
        != _lock(locks, folder / Z_MAP.replace("stat-z", f"stat-{stat_type}")).lock_file
    )
    s3.proxy.stall = Z_MAP
    s3.proxy.stall_times = 1
    client = _client(_load_in_a_client())
    try:
        _wait_for_stall(s3, client)
        [live] = _parts(folder)
        # A dead download's leftover beside it, of another file of the folder.
        dead = folder / f".{Z_MAP.replace('stat-z', f'stat-{other}')}.d3adb33f.part"
        dead.write_bytes(b"half")
        # This process downloads into the same folder, which cleans it: the
        # dead leftover goes, the live download's part stays.
        LAIONfMRIDataset(URL).load_first_level_contrast("sub-01", stat_type=other)
        assert _parts(folder) == [live]
    finally:
        # The stalled body ends cut short; the client tries again and succeeds.
        s3.proxy.release()
        assert client.wait(timeout=60) == 0
    assert not _parts(folder)
    same_image(
        LAIONfMRIDataset(URL).load_first_level_contrast("sub-01"),
        _local(s3).load_first_level_contrast("sub-01"),
    )
    assert len(s3.proxy.matching("GET", Z_MAP)) == 2


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_cached_map_damaged_in_place_is_fetched_again(s3, cache, caplog):
    dataset = LAIONfMRIDataset(URL)
    path = dataset.get_path("sub-02", contrast="faceVsScene")
    original = path.read_bytes()
    _flip_a_byte(path)
    assert path.stat().st_size == len(original)
    expected = _local(s3).load_first_level_contrast("sub-02", contrast="faceVsScene")
    with caplog.at_level(logging.WARNING, logger="laion_fmri"):
        # In a new session as in this one: the copy is checked on every use.
        for session in (LAIONfMRIDataset(URL), dataset):
            image = session.load_first_level_contrast("sub-02", contrast="faceVsScene")
            same_image(image, expected)
            assert path.read_bytes() == original
            _flip_a_byte(path)
    name = path.name
    assert len(s3.proxy.matching("GET", name)) == 3
    damaged = [r for r in caplog.records if "differs from what was downloaded" in r.msg]
    assert len(damaged) == 2


def test_an_edited_cached_sidecar_is_fetched_again(s3, cache):
    arguments = {"subject": "sub-01", "contrast": "faceVsScene", "stat_type": "t"}
    dataset = LAIONfMRIDataset(URL)
    metadata = dataset.load_metadata(**arguments)
    assert metadata == _local(s3).load_metadata(**arguments)
    path = dataset.get_path(**arguments).with_suffix("").with_suffix(".json")
    text = path.read_text()
    edited = text.replace('"first_level"', '"group_level"')
    assert edited != text and len(edited) == len(text)
    path.write_text(edited)
    assert LAIONfMRIDataset(URL).load_metadata(**arguments) == metadata
    assert path.read_text() == text


@pytest.mark.slow
@pytest.mark.parametrize(
    ("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)], ids=["022", "027"]
)
def test_cached_files_have_the_mode_the_umask_gives(s3, cache, umask, mode):
    code = f"""
        from laion_fmri_dataloader.dataset import LAIONfMRIDataset
        dataset = LAIONfMRIDataset({URL!r})
        dataset.load_first_level_contrast("sub-01")
        dataset.load_metadata("sub-01")
    """
    assert _client(code, umask=umask).wait(timeout=60) == 0
    files = [path for path in _glm_cache(cache, s3).rglob("*") if path.is_file()]
    # The map, its sidecar and their download records.
    assert len(files) == 4
    assert {oct(stat.S_IMODE(path.stat().st_mode)) for path in files} == {oct(mode)}


def test_cached_files_load_when_the_store_cannot_be_reached(
    s3, cache, monkeypatch, caplog
):
    # A server of its own, to be stopped: its address is part of the cache's.
    proxy = FaultyProxy(s3.moto_port)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    group = {"contrast": "faceVsScene", "correction": "fdr"}
    try:
        online = LAIONfMRIDataset(URL)
        z_map = online.load_first_level_contrast("sub-01")
        metadata = online.load_metadata("sub-01")
        corrected = online.load_group_level_contrast(**group)
    finally:
        proxy.stop()

    with caplog.at_level(logging.WARNING, logger="laion_fmri"):
        offline = LAIONfMRIDataset(URL)
        # What was cached is what is listed, and it loads.
        assert offline.subjects == ["sub-01"]
        same_image(offline.load_first_level_contrast("sub-01"), z_map)
        assert offline.load_metadata("sub-01") == metadata
        same_image(offline.load_group_level_contrast(**group), corrected)
    refreshed = [r for r in caplog.records if "could not refresh" in r.getMessage()]
    assert len(refreshed) == 1
    assert f"could not refresh the listing of {URL}/derivatives" in (
        refreshed[0].getMessage()
    )

    folder = cache / endpoint_folder(proxy) / BUCKET / "fmri/derivatives/glm"
    store = RemoteStore(GLM_URL)
    with pytest.raises(
        RemoteError,
        match=r"could not list .* after 4 tries .*; "
        rf"{GLM_URL}/first_level/sub-01/{T_MAP} has no verified copy in the cache",
    ):
        store.local_path(PurePosixPath("first_level/sub-01") / T_MAP)
    with pytest.raises(
        RemoteError,
        match=rf"nothing of {GLM_URL}/first_level/sub-02 is in the cache either",
    ):
        store.listdir(PurePosixPath("first_level/sub-02"))
    # A damaged copy is not used, even without the store.
    _flip_a_byte(folder / "first_level/sub-01" / Z_MAP)
    with pytest.raises(RemoteError, match="has no verified copy in the cache"):
        LAIONfMRIDataset(URL).load_first_level_contrast("sub-01")


def test_the_pipeline_never_lists_from_the_cache(s3, cache, monkeypatch):
    proxy = FaultyProxy(s3.moto_port)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    try:
        RemoteStore(GLM_URL).local_path(PurePosixPath("first_level/sub-01") / Z_MAP)
    finally:
        proxy.stop()
    # The group level fetches every first-level map: a cached few would not do.
    with (
        pytest.raises(RemoteError, match=rf"could not list {GLM_URL}/first_level "),
        staged_output(GLM_URL, fetch=("first_level",)),
    ):
        pass


def test_an_invalid_sidecar_raises_corrupt_file_error_naming_it(s3, cache, tmp_path):
    local = tmp_path / "tree"
    subject = local / "derivatives/glm/first_level/sub-01"
    subject.mkdir(parents=True)
    (subject / Z_MAP).write_bytes(
        (s3.tree / "derivatives/glm/first_level/sub-01" / Z_MAP).read_bytes()
    )
    sidecar = subject / Z_MAP.replace(".nii.gz", ".json")
    sidecar.write_text(json.dumps({"AnalysisLevel": "third", "StatType": "z"}))
    upload_tree(local, f"s3://{BUCKET}/bad-sidecar")
    url = f"s3://{BUCKET}/bad-sidecar/derivatives/glm/first_level/sub-01/{sidecar.name}"
    with pytest.raises(
        CorruptFileError,
        match=rf"sidecar {url} is not valid \(AnalysisLevel: Input should be "
        "'first_level' or 'group_level'\\); restore it",
    ):
        LAIONfMRIDataset(f"s3://{BUCKET}/bad-sidecar").load_metadata("sub-01")
