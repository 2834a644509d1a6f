"""Make the README's pictures from the demo's output.

Usage (from the repository root, after or instead of ``make demo``)::

    .venv/bin/python docs/make_figures.py [DATA_DIR]

``DATA_DIR`` defaults to ``laion-fmri-data``; the demo is run first when it has
no group level (a rerun reuses complete work).  Writes, each below 200 KB:

- ``docs/images/group_map.png``: the group faceVsScene FWE-corrected z map on
  the MNI template, with the outline of the true face and scene regions;
- ``docs/images/design_matrix.png``: sub-01's design matrix of run 1;
- ``docs/images/report.png``: the top of the group report in headless
  Chromium (skipped with a message when no Chromium is installed).
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from laion_fmri_dataloader import layout
from laion_fmri_dataloader.demo import run_demo
from laion_fmri_dataloader.inputs.bids import (
    DEFAULT_CONFOUNDS,
    find_runs,
    read_confounds,
)
from laion_fmri_dataloader.inputs.events import read_events
from laion_fmri_dataloader.inputs.timing import read_timing
from laion_fmri_dataloader.pipeline.design_figure import plot_designs
from laion_fmri_dataloader.report import (
    HEADLESS_CHROMIUM_FLAGS,
    report_path,
    write_reports,
)
from laion_fmri_dataloader.sidecar import MapSidecar
from laion_fmri_dataloader.simulate import load_truth
from laion_fmri_dataloader.stats.design import make_design

IMAGES = Path(__file__).resolve().parent / "images"
CONTRAST = "faceVsScene"
TASK = "experiment"
MAX_BYTES = 200_000


def _save(figure: Figure, path: Path, dpi: int = 110) -> Path:
    """Save as a palette PNG: the figures hold few colours, so it stays small."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    _write_small_png(Image.open(buffer), path)
    return path


def _write_small_png(image: Image.Image, path: Path, dither: bool = False) -> None:
    """Write a 256-colour PNG; ``dither`` for screenshots with colour gradients."""
    image = image.convert("RGB")
    if dither:
        image = image.quantize(
            colors=256,
            method=Image.Quantize.FASTOCTREE,
            dither=Image.Dither.FLOYDSTEINBERG,
        )
    else:
        image = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    image.save(path, optimize=True)
    if path.stat().st_size > MAX_BYTES:
        sys.exit(f"{path} is {path.stat().st_size} bytes; keep README images small")
    print(f"wrote {path} ({path.stat().st_size // 1000} KB)")


def group_map(data_dir: Path, out: Path) -> Path:
    """The FWE-corrected faceVsScene map on the template, truth outlined."""
    import nibabel as nib
    from nilearn import datasets, plotting

    glm = data_dir / layout.DERIVATIVE_SUBDIR
    relative = layout.group_map(CONTRAST, correction="fwe")
    fwe = nib.load(glm / relative)
    sidecar = MapSidecar.model_validate_json(
        (glm / layout.sidecar_of(relative)).read_text()
    )
    threshold = sidecar.Correction.ZThreshold
    z = np.asanyarray(fwe.dataobj)
    peak = np.unravel_index(np.abs(z).argmax(), z.shape)
    peak_mm = nib.affines.apply_affine(fwe.affine, peak)
    subjects = len(list((glm / layout.FIRST_LEVEL_DIR).glob("sub-*")))
    figure = Figure(figsize=(9.0, 3.6))
    display = plotting.plot_stat_map(
        fwe,
        bg_img=datasets.load_mni152_template(resolution=1),
        # survivors have |z| >= the threshold recorded in the sidecar
        threshold=float(np.nextafter(threshold, 0.0)),
        cmap="RdBu_r",
        symmetric_cbar=True,
        display_mode="ortho",
        cut_coords=peak_mm,
        draw_cross=False,
        black_bg=False,
        annotate=True,
        figure=figure,
        axes=(0.0, 0.0, 1.0, 0.84),
        resampling_interpolation="nearest",
    )
    truth, _ = load_truth(data_dir, "group", CONTRAST, task=TASK)
    effect = np.asanyarray(truth.dataobj)
    strong = np.abs(effect) >= 0.5 * np.abs(effect).max()
    display.add_contours(
        nib.Nifti1Image(strong.astype(np.float32), truth.affine),
        levels=[0.5],
        colors="#1a9850",
        linewidths=1.2,
    )
    figure.suptitle(
        f"Faces vs scenes, {subjects} simulated subjects: group z map, "
        f"FWE-corrected (p < 0.05, |z| ≥ {threshold:.2f})\n"
        "green outline: the true face- and scene-selective regions",
        fontsize=11,
        y=0.99,
    )
    return _save(figure, out)


def design_matrix(data_dir: Path, out: Path) -> Path:
    """sub-01's first run, drawn as the pipeline draws it."""
    import nibabel as nib

    run = find_runs(data_dir, data_dir / "derivatives" / "fmriprep", "01", TASK)[0]
    bold = nib.load(run.bold)
    n_volumes = bold.shape[3]
    repetition_time = read_timing(run.sidecars, bold, run.bold).repetition_time
    design = make_design(
        read_events(run.events, {}).table,
        read_confounds(run.confounds, DEFAULT_CONFOUNDS, n_volumes).table,
        n_volumes,
        repetition_time,
    )
    figure = plot_designs(
        [design],
        [run.name],
        f"sub-01 task-{TASK}: design matrix (TR {repetition_time:g} s)",
    )
    return _save(figure, out, dpi=90)


def report_screenshot(data_dir: Path, out: Path) -> Path | None:
    """The top of the group report, as Chromium draws it."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        print("no chromium on PATH: docs/images/report.png left as it is")
        return None
    page = data_dir / layout.DERIVATIVE_SUBDIR / report_path("group")
    with tempfile.TemporaryDirectory() as folder:
        shot = Path(folder) / "shot.png"
        subprocess.run(
            [
                binary,
                *HEADLESS_CHROMIUM_FLAGS,
                f"--user-data-dir={folder}/profile",
                "--window-size=1200,1400",
                f"--screenshot={shot}",
                page.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        image = Image.open(shot).convert("RGB")
        image = image.resize(
            (image.width * 3 // 4, image.height * 3 // 4), Image.Resampling.LANCZOS
        )
        _write_small_png(image, out, dither=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", nargs="?", default="laion-fmri-data")
    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir)
    glm = data_dir / layout.DERIVATIVE_SUBDIR
    if not (glm / layout.group_map(CONTRAST, correction="fwe")).is_file():
        run_demo(data_dir)
    else:
        write_reports(glm, force=True)
    IMAGES.mkdir(parents=True, exist_ok=True)
    group_map(data_dir, IMAGES / "group_map.png")
    design_matrix(data_dir, IMAGES / "design_matrix.png")
    report_screenshot(data_dir, IMAGES / "report.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
