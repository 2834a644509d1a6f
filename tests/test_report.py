"""HTML reports: content, self-containment, rerun, and rendering in Chromium."""

from __future__ import annotations

import base64
import re
import shutil
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from laion_fmri_dataloader import layout
from laion_fmri_dataloader.inputs.confounds import (
    HIGH_MOTION_FD_MM,
    confounds_names,
    motion_summary,
)
from laion_fmri_dataloader.pipeline.scheduler import IN_PROCESS
from laion_fmri_dataloader.report import (
    HEADLESS_CHROMIUM_FLAGS,
    NULL_CALIBRATION_NOTE,
    report_path,
    write_index,
    write_reports,
    write_subject_report,
)
from laion_fmri_dataloader.sidecar import MapSidecar
from laion_fmri_dataloader.simulate.scoring import compare_with_truth

TASK = "experiment"


# ---------------------------------------------------------------------------
# Units


def test_compare_with_truth_counts_inside_the_mask_only():
    corrected = np.array([3.0, 0.0, 0.0, 4.0, -5.0, 6.0])
    truth = np.array([1.0, 2.0, 0.0, 0.0, 1.0, 1.0])
    mask = np.array([True, True, True, True, True, False])
    comparison, labels = compare_with_truth(corrected, truth, mask)
    assert (comparison.n_true, comparison.hits, comparison.misses) == (3, 1, 1)
    assert (comparison.false_positives, comparison.sign_errors) == (1, 1)
    assert (comparison.n_strong, comparison.strong_hits) == (3, 1)
    assert comparison.n_found == 3
    assert comparison.sensitivity == pytest.approx(1 / 3)
    assert comparison.false_discovery_proportion == pytest.approx(2 / 3)
    assert labels.tolist() == [1, 2, 0, 4, 4, 0]


def test_compare_with_truth_rejects_other_shapes():
    with pytest.raises(ValueError, match="must have one shape"):
        compare_with_truth(np.zeros(3), np.zeros(4), np.ones(3, bool))


def test_motion_summary_reads_framewise_displacement(tmp_path):
    path = tmp_path / "sub-01_task-x_desc-confounds_timeseries.tsv"
    values = [0.1, 0.2, 0.9, 0.3]
    path.write_text(
        "framewise_displacement\ttrans_x\nn/a\t0\n"
        + "".join(f"{value}\t0\n" for value in values)
    )
    summary = motion_summary(path)
    assert summary.n_volumes == 5
    assert summary.mean_fd == pytest.approx(np.mean(values))
    assert summary.max_fd == pytest.approx(0.9)
    assert summary.high_motion_share == pytest.approx(1 / 5)
    assert any("mean framewise displacement 0.38 mm" in w for w in summary.warnings)


@pytest.mark.parametrize(
    "content", [None, "trans_x\n0\n0\n", "framewise_displacement\nn/a\nn/a\n"]
)
def test_motion_summary_is_none_without_usable_values(tmp_path, content):
    path = tmp_path / "confounds.tsv"
    if content is not None:
        path.write_text(content)
    assert motion_summary(path) is None


def test_confounds_names_follow_the_bold_entities():
    bold = "sub-01_ses-2_task-x_run-3_space-MNI_res-2_desc-preproc_bold.nii.gz"
    assert confounds_names(bold) == [
        "sub-01_ses-2_task-x_run-3_desc-confounds_timeseries.tsv",
        "sub-01_ses-2_task-x_run-3_desc-confounds_regressors.tsv",
    ]


def _z_map(voxels: list[tuple[int, int, int]], value: float = 5.0) -> nib.Nifti1Image:
    """A z map on an 8 mm grid that reaches beyond the brain, non-zero at ``voxels``."""
    data = np.zeros((31, 37, 31), dtype=np.float32)
    for voxel in voxels:
        data[voxel] = value
    affine = np.diag([8.0, 8.0, 8.0, 1.0])
    affine[:3, 3] = [-120.0, -156.0, -108.0]
    return nib.Nifti1Image(data, affine)


def test_a_glass_brain_does_not_depend_on_the_maps_drawn_before():
    from laion_fmri_dataloader.report.figures import GlassBrains

    near = _z_map([(15, 18, 15), (16, 18, 15), (14, 20, 17)])
    # a voxel far outside the brain outline widens nilearn's views
    far = _z_map([(0, 0, 0), (30, 36, 30)], value=-6.0)
    shared = GlassBrains()
    first = shared.render(near, "near", 3.1)
    shared.render(far, "far", 3.1)
    assert shared.render(near, "near", 3.1) == first
    assert GlassBrains().render(near, "near", 3.1) == first


# ---------------------------------------------------------------------------
# Reports of a simulated dataset


def _relocate(source: Path, target: Path) -> Path:
    """Copy a dataset; point the sidecars' run paths at the copy."""
    shutil.copytree(source, target)
    for sidecar in (target / "derivatives" / "glm").rglob("*.json"):
        text = sidecar.read_text()
        if str(source) in text:
            sidecar.write_text(text.replace(str(source), str(target)))
    return target


@pytest.fixture(scope="module")
def reports(group_dataset, tmp_path_factory):
    """Reports of six simulated subjects (8 mm) and their group, with truth."""
    root = _relocate(group_dataset, tmp_path_factory.mktemp("reports") / "data")
    glm = root / "derivatives" / "glm"
    paths = write_reports(glm)
    return glm, paths


def _subjects(glm: Path) -> list[str]:
    return sorted(p.name for p in (glm / layout.FIRST_LEVEL_DIR).glob("sub-*"))


def _contrasts(glm: Path) -> list[str]:
    names = (glm / layout.GROUP_LEVEL_DIR).glob("*_stat-z.nii.gz")
    return sorted(layout.parse_name(p.name)["contrast"] for p in names)


@pytest.mark.slow
def test_one_report_per_subject_then_group_then_index(reports):
    glm, paths = reports
    expected = [glm / report_path(s) for s in _subjects(glm)]
    expected += [glm / report_path("group"), glm / report_path("index")]
    assert paths == expected
    assert len(_subjects(glm)) == 6
    assert all(path.stat().st_size > 0 for path in paths)


@pytest.mark.slow
def test_reports_are_self_contained(reports):
    _, paths = reports
    for path in paths:
        text = path.read_text()
        assert "http://" not in text and "https://" not in text, path.name
        assert "<script" not in text and "<link" not in text, path.name
        sources = re.findall(r'<img src="([^"]*)"', text)
        assert all(s.startswith("data:image/png;base64,") for s in sources)
        for href in re.findall(r'href="([^"]*)"', text):
            assert href.startswith("#") or re.fullmatch(
                r"[a-z0-9-]+\.html(#contrast-[A-Za-z0-9]+)?", href
            )


def _decoded_png_sizes(text: str) -> list[int]:
    sources = re.findall(r'<img src="data:image/png;base64,([^"]*)"', text)
    payloads = [base64.b64decode(source) for source in sources]
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in payloads)
    return [len(p) for p in payloads]


@pytest.mark.slow
def test_subject_report_shows_design_maps_peaks_model_and_runs(reports):
    glm, _ = reports
    subject = "sub-01"
    text = (glm / report_path(subject)).read_text()
    contrasts = _contrasts(glm)
    for contrast in contrasts:
        assert f'id="contrast-{contrast}"' in text
        assert f"{contrast} z map of {subject}" in text
    # design figure + one glass brain per contrast
    assert len(_decoded_png_sizes(text)) == 1 + len(contrasts)
    design = (glm / layout.design_matrix_png(subject, TASK)).read_bytes()
    assert base64.b64encode(design).decode() in text
    sidecar = MapSidecar.model_validate_json(
        (
            glm
            / layout.sidecar_of(
                layout.first_level_map(subject, TASK, contrasts[0], "z")
            )
        ).read_text()
    )
    assert f"<td>{sidecar.Model.NoiseModel}</td>" in text
    assert "Peak Stat" in text
    for run in sidecar.Runs:
        assert Path(run).name in text
    assert "no framewise displacement found" not in text
    assert "Mean FD (mm)" in text


@pytest.mark.slow
def test_subject_report_lists_the_strongest_peak(reports):
    glm, _ = reports
    contrast = "faceVsBaseline"
    z = nib.load(glm / layout.first_level_map("01", TASK, contrast, "z"))
    strongest = float(np.abs(np.asanyarray(z.dataobj)).max())
    text = (glm / report_path("sub-01")).read_text()
    block = text.split(f'id="contrast-{contrast}"')[1].split('id="contrast-')[0]
    peaks = re.findall(r'<td class="num">(-?[0-9.]+)</td>', block)
    assert f"{strongest:.3g}" in [value.lstrip("-") for value in peaks]


def _group_block(text: str, contrast: str) -> str:
    return text.split(f'id="contrast-{contrast}"')[1].split("</section>")[0]


@pytest.mark.slow
def test_group_report_shows_maps_corrections_clusters_and_subjects(reports):
    glm, _ = reports
    text = (glm / report_path("group")).read_text()
    assert NULL_CALIBRATION_NOTE in text
    for subject in _subjects(glm):
        assert subject in text
    for contrast in _contrasts(glm):
        block = _group_block(text, contrast)
        # the uncorrected map, each corrected map, then each one's truth overlay
        corrections = [
            c
            for c in layout.CORRECTIONS
            if (glm / layout.group_map(contrast, correction=c)).is_file()
        ]
        assert len(_decoded_png_sizes(block)) == 1 + 2 * len(corrections)
        for correction in corrections:
            relative = layout.group_map(contrast, correction=correction)
            info = MapSidecar.model_validate_json(
                (glm / layout.sidecar_of(relative)).read_text()
            ).Correction
            assert info.Method in block
            if info.ZThreshold is not None:
                assert f"{info.ZThreshold:.3g}" in block
            surviving = int(np.count_nonzero(nib.load(glm / relative).dataobj))
            assert f'<td class="num">{surviving}</td>' in block
            table = pd.read_csv(
                glm / layout.cluster_table(contrast, correction), sep="\t"
            )
            assert f"Clusters, {correction.upper()}-corrected" in block
            if len(table):
                assert f"{table['Peak Stat'].iloc[0]:.3g}" in block


@pytest.mark.slow
def test_group_report_counts_hits_against_the_truth(reports):
    glm, _ = reports
    text = (glm / report_path("group")).read_text()
    truth_dir = glm.parent / "truth" / "group"
    mask = nib.load(glm / layout.group_mask()).get_fdata() > 0
    total_hits = 0
    for contrast in _contrasts(glm):
        truth = nib.load(
            truth_dir / f"group_task-{TASK}_contrast-{contrast}_truth-effect.nii.gz"
        ).get_fdata()
        block = _group_block(text, contrast).split("Recovered versus true effect")[1]
        for correction in layout.CORRECTIONS:
            z = nib.load(
                glm / layout.group_map(contrast, correction=correction)
            ).get_fdata()
            found = (z != 0) & mask
            true = (truth != 0) & mask
            hits = int((found & true & (np.sign(z) == np.sign(truth))).sum())
            row = re.search(
                rf"<tr><td>{correction.upper()}</td>((?:<td[^>]*>[^<]*</td>)+)</tr>",
                block,
            )
            cells = [int(c) for c in re.findall(r">(\d+)</td>", row.group(1))[:6]]
            assert cells == [
                int(true.sum()),
                int(found.sum()),
                hits,
                int((true & ~found).sum()),
                int((found & ~true).sum()),
                int((found & true).sum()) - hits,
            ], (contrast, correction)
            total_hits += hits
    # the simulated category regions are strong: the corrected maps find some
    assert total_hits > 0


@pytest.mark.slow
def test_index_links_every_report_and_summarises_the_group(reports):
    glm, paths = reports
    text = (glm / report_path("index")).read_text()
    for path in paths[:-1]:
        assert f'href="{path.name}"' in text
    for contrast in _contrasts(glm):
        fwe = nib.load(glm / layout.group_map(contrast, correction="fwe"))
        row = text.split(f'href="group.html#contrast-{contrast}"')[1].split("</tr>")[0]
        assert f'<td class="num">{np.count_nonzero(fwe.dataobj)}</td>' in row


@pytest.mark.slow
def test_high_motion_and_missing_confounds_are_flagged(reports):
    glm, _ = reports
    sidecar = MapSidecar.model_validate_json(
        (
            glm
            / layout.sidecar_of(layout.first_level_map("02", TASK, "faceVsScene", "z"))
        ).read_text()
    )
    folder = glm.parent.parent / Path(sidecar.Runs[0]).parent
    originals = {
        path: path.read_bytes()
        for path in folder.glob("sub-02_*_desc-confounds_timeseries.tsv")
    }
    assert len(originals) == len(sidecar.Runs)
    try:
        for path in originals:
            table = pd.read_csv(path, sep="\t", na_values="n/a")
            table["framewise_displacement"] = 0.9
            table.loc[0, "framewise_displacement"] = np.nan
            table.to_csv(path, sep="\t", index=False, na_rep="n/a")
        text = write_subject_report(glm, "02", force=True).read_text()
        assert "mean framewise displacement 0.90 mm exceeds" in text
        assert f"move more than {HIGH_MOTION_FD_MM} mm" in text
        assert "mean framewise displacement 0.90 mm" in write_index(glm).read_text()
        for path in originals:
            path.unlink()
        text = write_subject_report(glm, "02", force=True).read_text()
        assert text.count("no framewise displacement found") == len(sidecar.Runs)
    finally:
        for path, content in originals.items():
            path.write_bytes(content)
    text = write_subject_report(glm, "02", force=True).read_text()
    assert "framewise displacement" not in text.split("Model and data")[0]
    write_index(glm)


@pytest.mark.slow
def test_rerun_skips_reports_that_are_up_to_date(reports):
    glm, paths = reports
    subject_report = paths[0]
    before = subject_report.stat().st_mtime_ns
    time.sleep(0.01)
    assert write_reports(glm) == paths
    assert subject_report.stat().st_mtime_ns == before
    write_subject_report(glm, subject_report.stem, force=True)
    assert subject_report.stat().st_mtime_ns > before


# ---------------------------------------------------------------------------
# Rendering in a real browser


# Debian's Chromium: Playwright drives it, and never downloads a browser.
_CHROMIUM = "/usr/bin/chromium"
_IMAGES_JS = (
    "Array.from(document.images).map("
    "i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth}))"
)


def _render(page, path: Path, screenshot: Path) -> dict:
    """Load ``path``; return its console errors, requests and images."""
    errors: list[str] = []
    requests: list[str] = []
    page.on(
        "console",
        lambda message: (
            errors.append(message.text) if message.type in ("error", "assert") else None
        ),
    )
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("requestfailed", lambda request: errors.append(f"failed: {request.url}"))
    page.on("request", lambda request: requests.append(request.url))
    page.goto(path.as_uri(), wait_until="load")
    images = page.evaluate(_IMAGES_JS)
    page.screenshot(path=screenshot)
    return {"errors": errors, "requests": requests, "images": images}


@pytest.mark.slow
def test_reports_render_in_chromium_with_every_image(reports, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(_CHROMIUM).is_file():
        pytest.skip(f"no {_CHROMIUM} (apt-get install -y chromium)")
    _, paths = reports
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=_CHROMIUM, args=list(HEADLESS_CHROMIUM_FLAGS)
        )
        try:
            for path in paths:
                page = browser.new_page(viewport={"width": 1200, "height": 900})
                shot = tmp_path / f"{path.stem}.png"
                rendered = _render(page, path, shot)
                page.close()
                assert rendered["errors"] == [], path.name
                # the page itself; images are data URIs, nothing else is fetched
                assert all(
                    url == path.as_uri() or url.startswith("data:")
                    for url in rendered["requests"]
                ), rendered["requests"]
                assert rendered["images"] or path.name == "index.html"
                for image in rendered["images"]:
                    assert image["complete"] and image["width"] > 0, image["alt"]
                assert shot.read_bytes().startswith(b"\x89PNG")
                assert shot.stat().st_size > 5_000
        finally:
            browser.close()


# ---------------------------------------------------------------------------
# The demo


@pytest.mark.slow
def test_demo_runs_prints_a_working_snippet_and_reuses_its_work(
    tmp_path, monkeypatch, capsys
):
    from laion_fmri_dataloader import demo
    from laion_fmri_dataloader.simulate import SimulationConfig

    small = SimulationConfig(subjects=6, runs=1, resolution=8.0, n_volumes=60, seed=2)
    monkeypatch.setattr(demo, "demo_simulation", lambda: small)
    monkeypatch.chdir(tmp_path)
    assert demo.run_demo("data", IN_PROCESS) == 0
    printed = capsys.readouterr().out
    glm = Path("data") / layout.DERIVATIVE_SUBDIR
    index = glm / report_path("index")
    assert str(index) in printed
    snippet = textwrap.dedent(printed.split("Load the results in Python:")[1])
    namespace: dict = {}
    exec(snippet, namespace)
    assert namespace["fwe"].shape == namespace["z"].shape
    assert "sign-flip permutation" in capsys.readouterr().out
    made = {
        path: path.stat().st_mtime_ns
        for path in [
            Path("data/derivatives/truth/simulation.json"),
            glm / layout.group_map("faceVsScene", "z"),
            glm / report_path("group"),
            glm / report_path("sub-01"),
        ]
    }
    assert demo.run_demo("data", IN_PROCESS) == 0
    assert {path: path.stat().st_mtime_ns for path in made} == made
