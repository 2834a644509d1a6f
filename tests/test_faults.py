"""Faults of inputs, disks, permissions and concurrent runs: exit 2, nothing lost.

Injected for real: corrupt and unreadable inputs (permissions checked as a user
without root's override, through ``setpriv`` or ``capsh``), a full disk and a
read-only file system (tmpfs mounts, where the tests run as root and may
mount), outputs changed or removed behind the pipeline's back, two runs on one
output folder, and a Dask worker that dies at a write.  Completeness of a
subject or of the group must follow the files' content, a bad input or an
unwritable output must give exit 2 and one line naming the file, and the
outputs of other subjects must stay as an uninterrupted run makes them.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dask
import pytest
from filelock import FileLock

from _faults import (
    copy_dataset,
    differences,
    glm,
    group_args,
    participant_args,
    simulate,
    snapshot,
)
from laion_fmri_dataloader import layout
from laion_fmri_dataloader.cli import main
from laion_fmri_dataloader.io.files import KILL_AT_WRITE_ENV

BOLD = (
    "derivatives/fmriprep/sub-02/func/"
    "sub-02_task-experiment_run-1_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
)
COMMAND = "import sys; from laion_fmri_dataloader.cli import main; sys.exit(main())"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Four subjects fitted at both levels, never modified (copy it first)."""
    dataset = simulate(tmp_path_factory.mktemp("faults") / "data")
    assert main(participant_args(dataset)) == 0
    assert main(group_args(dataset)) == 0
    return dataset


@pytest.fixture
def dataset(fitted, tmp_path):
    """A copy of the fitted dataset (timestamps kept: nothing is out of date)."""
    return copy_dataset(fitted, tmp_path / "data")


def _folder(dataset, subject=None):
    if subject is None:
        return glm(dataset) / layout.GROUP_LEVEL_DIR
    return glm(dataset) / layout.first_level_dir(subject)


def _assert_same(dataset, fitted, *subjects, group=False):
    """The folders named are byte for byte those of the uninterrupted run."""
    pairs = [(_folder(dataset, s), _folder(fitted, s)) for s in subjects]
    if group:
        pairs.append((_folder(dataset), _folder(fitted)))
    for found, expected in pairs:
        wrong = differences(snapshot(found), snapshot(expected))
        assert not wrong, f"{found}: {wrong[:5]}"


def _no_files(folder):
    return not folder.exists() or not any(p.is_file() for p in folder.rglob("*"))


def _one_line(capsys) -> str:
    error = capsys.readouterr().err.strip()
    assert error.startswith("laion-fmri-glm: error: "), error
    assert "\n" not in error and "Traceback" not in error, error
    return error


def _status(caplog) -> str:
    lines = [r.message for r in caplog.records if "participant level:" in r.message]
    return lines[-1] if lines else ""


# -- completeness from content -------------------------------------------------


def _redo_subject(dataset, caplog, *extra):
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="laion_fmri"):
        code = main(participant_args(dataset, "--participant-label", "01", *extra))
    return code, _status(caplog)


SUBJECT_DAMAGE = {
    "map of other parameters": lambda folder: shutil.copy(
        folder / "sub-01_task-experiment_contrast-faceVsScene_stat-t.nii.gz",
        folder / "sub-01_task-experiment_contrast-faceVsScene_stat-z.nii.gz",
    ),
    "sidecar edited": lambda folder: (
        folder / "sub-01_task-experiment_contrast-faceVsScene_stat-z.json"
    ).write_text("{}"),
    "mask deleted": lambda folder: (
        folder / "sub-01_task-experiment_mask.nii.gz"
    ).unlink(),
    "figure deleted": lambda folder: (
        folder / "sub-01_task-experiment_design-matrix.png"
    ).unlink(),
    "manifest deleted": lambda folder: (
        folder / "sub-01_task-experiment_outputs.json"
    ).unlink(),
}


@pytest.mark.parametrize("damage", list(SUBJECT_DAMAGE))
def test_a_subject_is_complete_only_as_its_manifest_records(
    dataset, fitted, caplog, damage
):
    assert _redo_subject(dataset, caplog)[1].startswith(
        "participant level: 0 done, 1 skipped"
    )
    SUBJECT_DAMAGE[damage](_folder(dataset, "01"))
    code, status = _redo_subject(dataset, caplog)
    assert code == 0 and status.startswith("participant level: 1 done"), status
    _assert_same(dataset, fitted, "01")


GROUP_DAMAGE = {
    "group mask deleted": "group_mask.nii.gz",
    "cluster table deleted": "group_contrast-faceVsScene_fdr-corrected_clusters.tsv",
    "sidecar deleted": "group_contrast-faceVsScene_stat-t.json",
}


@pytest.mark.parametrize("damage", list(GROUP_DAMAGE))
def test_the_group_is_complete_only_as_its_manifest_records(
    dataset, fitted, caplog, capsys, damage
):
    (_folder(dataset) / GROUP_DAMAGE[damage]).unlink()
    if damage == "group mask deleted":
        assert main(["info", str(dataset)]) == 0
        assert "  group mask" in capsys.readouterr().out
    with caplog.at_level(logging.INFO, logger="laion_fmri"):
        assert main(group_args(dataset)) == 0
    assert "outputs complete and up to date, skipped" not in caplog.text
    _assert_same(dataset, fitted, group=True)
    assert main(["info", str(dataset)]) == 0
    assert "missing: nothing" in capsys.readouterr().out


def test_the_group_refuses_an_interrupted_first_level(dataset, capsys):
    manifest = _folder(dataset, "03") / "sub-03_task-experiment_outputs.json"
    content = json.loads(manifest.read_text())
    content["Complete"] = False
    manifest.write_text(json.dumps(content))
    assert main(group_args(dataset, "--force")) == 2
    error = _one_line(capsys)
    assert "the first level of sub-03 is incomplete" in error
    assert "sub-03_task-experiment_outputs.json" in error


def test_stale_temporaries_of_both_levels_are_removed(dataset, fitted, caplog):
    stale = [
        _folder(dataset, "01") / ".sub-01_task-experiment_mask.nii.gz.x1.tmp.nii.gz",
        _folder(dataset) / ".group_mask.nii.gz.x2.tmp.nii.gz",
        glm(dataset) / ".dataset_description.json.x3.tmp.json",
    ]
    for path in stale:
        path.write_bytes(b"left by a killed run")
    with caplog.at_level(logging.INFO, logger="laion_fmri"):
        assert main(participant_args(dataset)) == 0
        assert main(group_args(dataset)) == 0
    assert "4 skipped" in _status(caplog)
    assert not [path for path in stale if path.exists()]
    _assert_same(dataset, fitted, "01", "02", "03", "04", group=True)


# -- inputs checked before C code opens them ------------------------------------


def _gzip_of_text(path):
    path.write_bytes(gzip.compress(b"not a NIfTI image at all" * 40))


BAD_BOLD = {
    "empty": (lambda path: path.write_bytes(b""), "0 bytes"),
    "100 bytes": (
        lambda path: path.write_bytes(path.read_bytes()[:100]),
        "ends inside the NIfTI header",
    ),
    "random bytes": (
        lambda path: path.write_bytes(os.urandom(100_000)),
        "not gzip-compressed",
    ),
    "gzip of another file": (_gzip_of_text, "not a NIfTI image"),
}


@pytest.mark.parametrize("case", list(BAD_BOLD))
def test_a_damaged_bold_exits_2_naming_it(dataset, capsys, case):
    damage, reason = BAD_BOLD[case]
    damage(dataset / BOLD)
    shutil.rmtree(_folder(dataset, "02"))
    assert main(participant_args(dataset, "--participant-label", "02")) == 2
    error = _one_line(capsys)
    assert BOLD in error and reason in error, error
    assert _no_files(_folder(dataset, "02"))


def _without_override(argv: list[str]) -> list[str]:
    """``argv`` run without root's permission override (as it is, if not root)."""
    if os.geteuid() != 0:
        return argv
    if shutil.which("setpriv"):
        drop = "--bounding-set=-dac_override,-dac_read_search"
        return ["setpriv", drop, "--", *argv]
    if shutil.which("capsh"):
        drop = "--drop=cap_dac_override,cap_dac_read_search"
        return ["capsh", drop, "--", "-c", shlex.join(argv)]
    pytest.skip("running as root without setpriv or capsh to drop the override")


@pytest.fixture(scope="module")
def unprivileged(tmp_path_factory):
    """A function running the command line without root's override."""
    probe = tmp_path_factory.mktemp("probe") / "secret"
    probe.write_text("x")
    probe.chmod(0)
    check = subprocess.run(
        _without_override(["cat", str(probe)]), capture_output=True, check=False
    )
    if check.returncode == 0:
        pytest.skip("permissions are not enforced here, even without the override")

    def run(argv, **options):
        return subprocess.run(
            _without_override([sys.executable, "-c", COMMAND, *argv]),
            capture_output=True,
            text=True,
            check=False,
            **options,
        )

    return run


@pytest.mark.slow
def test_an_unreadable_bold_exits_2_naming_it(dataset, fitted, unprivileged):
    (dataset / BOLD).chmod(0)
    for subject in ("02", "03"):
        shutil.rmtree(_folder(dataset, subject))
    done = unprivileged(
        participant_args(dataset, "--participant-label", "02", "03", "01")
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Segmentation fault" not in done.stderr
    assert f"sub-02 failed: BOLD series {dataset / BOLD} cannot be read: " in (
        done.stderr
    )
    assert "permission denied" in done.stderr
    assert _no_files(_folder(dataset, "02"))
    _assert_same(dataset, fitted, "01", "03")


@pytest.mark.slow
def test_an_unwritable_subject_folder_fails_alone(dataset, fitted, unprivileged):
    shutil.rmtree(_folder(dataset, "02"))
    _folder(dataset, "02").mkdir()
    _folder(dataset, "02").chmod(0o555)
    shutil.rmtree(_folder(dataset, "03"))
    done = unprivileged(participant_args(dataset))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert f"sub-02 failed: cannot write {_folder(dataset, '02')}/" in done.stderr
    assert "Permission denied [EACCES]" in done.stderr
    assert _no_files(_folder(dataset, "02"))
    _assert_same(dataset, fitted, "01", "03", "04")


@pytest.mark.slow
def test_an_unwritable_group_folder_exits_2_in_one_line(dataset, unprivileged):
    _folder(dataset).chmod(0o555)
    try:
        done = unprivileged(group_args(dataset, "--force"))
    finally:
        _folder(dataset).chmod(0o755)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        f"laion-fmri-glm: error: cannot write {_folder(dataset)}/group_outputs.json: "
        "Permission denied [EACCES]; give this user write permission there or "
        "choose another output folder"
    )


# -- full and read-only disks ---------------------------------------------------


@pytest.fixture
def mount_tmpfs():
    """A function mounting a tmpfs of a size (KiB) on a folder; unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = []

    def mount(folder: Path, size_kib: int, *options: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        option = ",".join([f"size={size_kib}k", *options])
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", option, "tmpfs", str(folder)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _size_kib(folder: Path) -> int:
    """What the files of ``folder`` take on a tmpfs (whole 4 KiB pages)."""
    sizes = [path.stat().st_size for path in folder.rglob("*") if path.is_file()]
    return sum(4 * -(-size // 4096) for size in sizes)


def _used_kib(folder: Path) -> int:
    status = os.statvfs(folder)
    return (status.f_blocks - status.f_bfree) * status.f_frsize // 1024


def test_a_full_disk_exits_2_and_removes_partial_outputs(
    fitted, tmp_path, mount_tmpfs, caplog
):
    """One subject fits on the disk, the second fills it, the rest fail alike."""
    subject_kib = _size_kib(_folder(fitted, "01"))
    dataset = copy_dataset(fitted, tmp_path / "data")
    shutil.rmtree(glm(dataset))
    mount_tmpfs(glm(dataset), int(1.6 * subject_kib) + 64)
    with caplog.at_level(logging.INFO, logger="laion_fmri"):
        assert main(participant_args(dataset)) == 2
    assert _status(caplog).startswith("participant level: 1 done"), _status(caplog)
    failures = [r.message for r in caplog.records if " failed: " in r.message]
    assert len(failures) == 3
    for message in failures:
        assert "No space left on device [ENOSPC]" in message
        assert f"cannot write {glm(dataset)}/first_level/sub-0" in message
    _assert_same(dataset, fitted, "01")
    for subject in ("02", "03", "04"):
        assert _no_files(_folder(dataset, subject))
    # Nothing but the complete subject is left to fill the disk.
    assert not [p for p in glm(dataset).rglob(".*.tmp*")]
    assert _used_kib(glm(dataset)) < subject_kib + 64


def test_a_full_disk_at_the_group_level(dataset, mount_tmpfs, capsys):
    group_kib = _size_kib(_folder(dataset))
    shutil.rmtree(_folder(dataset))
    mount_tmpfs(_folder(dataset), group_kib // 3)
    assert main(group_args(dataset)) == 2
    error = _one_line(capsys)
    assert f"cannot write {_folder(dataset)}/group_" in error
    assert "No space left on device [ENOSPC]" in error
    assert _no_files(_folder(dataset))


def test_a_read_only_subject_folder_fails_alone(dataset, fitted, mount_tmpfs, caplog):
    for subject in ("02", "03"):
        shutil.rmtree(_folder(dataset, subject))
    mount_tmpfs(_folder(dataset, "02"), 4096)
    done = subprocess.run(
        ["mount", "-o", "remount,ro", str(_folder(dataset, "02"))], check=False
    )
    if done.returncode:
        pytest.skip("cannot remount the tmpfs read-only")
    with caplog.at_level(logging.INFO, logger="laion_fmri"):
        assert main(participant_args(dataset)) == 2
    assert _status(caplog) == (
        "participant level: 1 done, 2 skipped (already complete), 1 failed"
    )
    assert "Read-only file system [EROFS]" in caplog.text
    _assert_same(dataset, fitted, "01", "03", "04")


# -- two runs on one output folder ----------------------------------------------


def _start(argv, log_path):
    with open(log_path, "w") as log_file:
        return subprocess.Popen(
            [sys.executable, "-c", COMMAND, *argv],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


def _wait_for(paths, text, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not all(text in Path(path).read_text() for path in paths):
        assert time.monotonic() < deadline, [Path(p).read_text() for p in paths]
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("level", ["participant", "group"])
def test_two_runs_at_once_wait_for_each_other(dataset, fitted, tmp_path, level):
    """Both runs start while a third holds the lock; neither spoils the other."""
    if level == "participant":
        shutil.rmtree(_folder(dataset, "01"))
        argv = participant_args(dataset, "--participant-label", "01")
        lock = glm(dataset) / layout.lock_of(layout.first_level_dir("01"))
        stale = _folder(dataset, "01") / ".sub-01_task-experiment_mask.nii.gz.x.tmp"
        summaries = ["1 done, 0 skipped", "0 done, 1 skipped"]
    else:
        shutil.rmtree(_folder(dataset))
        argv = group_args(dataset)
        lock = glm(dataset) / layout.lock_of(layout.GROUP_LEVEL_DIR)
        stale = _folder(dataset) / ".group_mask.nii.gz.x.tmp.nii.gz"
        summaries = ["voxels survive", "outputs complete and up to date"]
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    with FileLock(lock):
        runs = [_start(argv, path) for path in logs]
        try:
            _wait_for(logs, "is being written by another run")
        except BaseException:
            for run in runs:
                run.kill()
            raise
        stale.parent.mkdir(parents=True, exist_ok=True)
        stale.write_bytes(b"left by a killed run")
    codes = [run.wait(timeout=300) for run in runs]
    texts = [path.read_text() for path in logs]
    assert codes == [0, 0], texts
    for summary in summaries:
        assert sum(summary in text for text in texts) == 1, texts
    assert not stale.exists()
    _assert_same(dataset, fitted, "01", group=level == "group")


# -- a Dask worker that dies ----------------------------------------------------


@pytest.mark.slow
def test_a_dying_worker_costs_no_other_subject_its_result(
    dataset, fitted, caplog, monkeypatch
):
    """Workers die at sub-02's first write; sub-01 and sub-03 are done once."""
    for subject in ("01", "02", "03"):
        shutil.rmtree(_folder(dataset, subject))
    monkeypatch.setenv(KILL_AT_WRITE_ENV, "1:sub-02/")
    argv = participant_args(dataset, "--participant-label", "01", "02", "03")
    argv[argv.index("none")] = "local"
    # One retry instead of Dask's three: two deaths show the same as four.
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 1}),
        caplog.at_level(logging.INFO),
    ):
        assert main([*argv, "--workers", "2"]) == 2
    messages = [record.getMessage() for record in caplog.records]
    # A worker can die between sub-01's end and the client's gather of its
    # result (Dask then says it lost the computed task and reschedules it):
    # the rerun finds sub-01's outputs complete from their content and skips
    # it, so its work is never redone.
    assert _status(caplog) in (
        "participant level: 2 done, 0 skipped (already complete), 1 failed",
        "participant level: 1 done, 1 skipped (already complete), 1 failed",
    )
    died = [m for m in messages if m.startswith("sub-02 failed: the worker fitting")]
    assert died and "ran out of memory" in died[0] and "crashed" in died[0]
    for subject in ("01", "03"):
        fits = [m for m in messages if m.startswith(f"sub-{subject}: fitting run-")]
        assert len(fits) == 1, messages
    _assert_same(dataset, fitted, "01", "03")
    # Only the last attempt's temporary, which the next run removes.
    left = [path.name for path in _folder(dataset, "02").iterdir()]
    assert all(name.startswith(".") and ".tmp" in name for name in left), left
