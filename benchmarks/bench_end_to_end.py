"""End to end, one subject: ``laion-fmri-glm glm ... participant`` against nilearn.

Three fresh processes do the same job on the same simulated run, interleaved
so that they see the same machine load, best (min) of ``--repeat``:

* ``ours``: the command a user runs, ``laion-fmri-glm glm BIDS OUT participant
  --force`` (the default ``--scheduler auto`` fits a single subject in the
  process): start-up, read the ``.nii.gz`` inputs, design, AR(1) fit, 24 maps
  + sidecars, mask, design-matrix PNG.
* ``nilearn``: the same work written with nilearn and nibabel: ``nib.load``,
  ``FirstLevelModel(t_r, hrf_model="spm", drift_model="cosine",
  high_pass=0.01, noise_model="ar1", mask_img=..., minimize_memory=True)``
  fit with the events and the nine confounds, six ``compute_contrast(
  output_type="all")``, the effect/variance/t/z maps saved with ``nib.save``,
  JSON sidecars, ``plot_design_matrix`` saved as PNG.
* ``floor``: only the I/O: start-up, read the BOLD (decompressed whole and
  masked volume by volume, our read path
  :func:`laion_fmri_dataloader.io.files.load_masked_series`), mask, events and
  confounds, write 24 maps on the brain mask with our writer, 25 JSON
  sidecars and a PNG of a design-sized matrix.  No process doing the job
  with these readers and writers can be faster.

Each process is timed from spawn to exit (wall) and by its CPU time (user +
system from ``wait4``, which load on a shared machine inflates less); it
reports its own peak resident memory (``VmHWM``).  ``ours`` calls the
console script's ``main`` in the worker, so that it can report its peak.
The maps of ``ours`` and ``nilearn`` are compared (max |dz| inside the mask
where nilearn's z is not clipped).
``--readers`` also times every gzip reader and writer considered for
``files``.

    python benchmarks/bench_end_to_end.py [--data DIR] [--repeat 2] [--readers]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _memory import peak_rss_mb

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_DATA = BENCH_DIR / "_data" / "end-to-end-2mm"
TASK = "experiment"
RUN = "sub-01_task-experiment_run-1"
SPACE = "space-MNI152NLin2009cAsym"
STATS = ("effect", "variance", "t", "z")
NILEARN_KEYS = {
    "effect": "effect_size",
    "variance": "effect_variance",
    "t": "stat",
    "z": "z_score",
}
# nilearn clips p-values at 1e-300; beyond this |z| its values are a floor.
NILEARN_Z_CEILING = 37.0
METHODS = ("ours", "nilearn", "floor")


def simulated_run(folder: Path, resolution: float, n_volumes: int) -> Path:
    """One subject, one run, simulated once and kept in ``folder`` (cached).

    A ``.complete`` marker records the parameters, so that an interrupted
    simulation or one of another size is redone.
    """
    from laion_fmri_dataloader.simulate import simulate_dataset

    marker = folder / ".complete"
    wanted = json.dumps({"resolution": resolution, "n_volumes": n_volumes})
    if marker.is_file() and marker.read_text() == wanted:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    simulate_dataset(
        folder, subjects=1, runs=1, resolution=resolution, n_volumes=n_volumes
    )
    marker.write_text(wanted)
    return folder


def inputs(data: Path) -> dict[str, Path]:
    """The four input files of the run, and its BOLD sidecar.

    Spelled out here rather than taken from ``simulate.run_files``: the nilearn
    and floor workers are timed from their start, and importing the simulator
    (scipy.ndimage among others) would add to their time.
    """
    prep = data / "derivatives" / "fmriprep" / "sub-01" / "func"
    return {
        "bold": prep / f"{RUN}_{SPACE}_desc-preproc_bold.nii.gz",
        "bold_json": prep / f"{RUN}_{SPACE}_desc-preproc_bold.json",
        "mask": prep / f"{RUN}_{SPACE}_desc-brain_mask.nii.gz",
        "confounds": prep / f"{RUN}_desc-confounds_timeseries.tsv",
        "events": data / "sub-01" / "func" / f"{RUN}_events.tsv",
    }


def _map_path(output: Path, contrast: str, stat: str) -> Path:
    name = f"sub-01_task-{TASK}_contrast-{contrast}_stat-{stat}.nii.gz"
    return output / "first_level" / "sub-01" / name


def _worker_nilearn(data: Path, output: Path) -> None:
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import nibabel as nib
    import pandas as pd
    from nilearn.glm.first_level import FirstLevelModel
    from nilearn.plotting import plot_design_matrix

    from laion_fmri_dataloader.contrasts import CONDITIONS, STANDARD_CONTRASTS
    from laion_fmri_dataloader.inputs.bids import DEFAULT_CONFOUNDS

    warnings.simplefilter("ignore")
    files = inputs(data)
    bold = nib.load(files["bold"])
    mask = nib.load(files["mask"])
    t_r = json.loads(files["bold_json"].read_text())["RepetitionTime"]
    events = pd.read_csv(files["events"], sep="\t")
    confounds = pd.read_csv(files["confounds"], sep="\t")[list(DEFAULT_CONFOUNDS)]
    confounds = confounds.bfill()
    model = FirstLevelModel(
        t_r=t_r,
        hrf_model="spm",
        drift_model="cosine",
        high_pass=0.01,
        noise_model="ar1",
        mask_img=mask,
        minimize_memory=True,
    )
    model.fit(bold, events=events, confounds=confounds)
    design = model.design_matrices_[0]
    folder = _map_path(output, "x", "z").parent
    folder.mkdir(parents=True, exist_ok=True)
    for name, contrast in STANDARD_CONTRASTS.items():
        vector = np.zeros(design.shape[1])
        for condition in CONDITIONS:
            vector[design.columns.get_loc(condition)] = contrast.weights[condition]
        maps = model.compute_contrast(vector, output_type="all")
        for stat, key in NILEARN_KEYS.items():
            path = _map_path(output, name, stat)
            nib.save(maps[key], path)
            sidecar = {"Contrast": name, "StatType": stat, "Weights": list(vector)}
            path.with_name(path.name.replace(".nii.gz", ".json")).write_text(
                json.dumps(sidecar, indent=2)
            )
    axes = plot_design_matrix(design)
    axes.figure.savefig(folder / f"sub-01_task-{TASK}_design-matrix.png", dpi=90)


def _worker_floor(data: Path, output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib
    import pandas as pd

    from laion_fmri_dataloader.io.files import (
        load_image,
        load_masked_series,
        save_image,
        write_json,
    )

    files = inputs(data)
    mask = np.asanyarray(load_image(files["mask"], what="mask").dataobj) > 0
    # Our read path: every byte of the BOLD decompressed, the brain kept.
    series = load_masked_series(files["bold"], mask, what="BOLD series")
    events = pd.read_csv(files["events"], sep="\t")
    confounds = pd.read_csv(files["confounds"], sep="\t")
    header = nib.load(files["bold"]).header.copy()
    header.set_data_dtype(np.float32)
    affine = header.get_best_affine()
    sidecar = {"Events": len(events), "Confounds": list(confounds.columns)}
    # Maps like the real ones: float32 values inside the brain, zeros outside.
    for index in range(len(STATS) * 6):
        volume = np.zeros(mask.shape, dtype=np.float32)
        volume[mask] = series[index]
        path = _map_path(output, f"c{index // len(STATS)}", STATS[index % len(STATS)])
        save_image(nib.Nifti1Image(volume, affine, header), path)
        write_json(sidecar, path.with_name(path.name.replace(".nii.gz", ".json")))
    save_image(
        nib.Nifti1Image(mask.astype(np.uint8), affine), path.with_name("mask.nii.gz")
    )
    write_json(sidecar, path.with_name("mask.json"))
    figure, axes = plt.subplots(figsize=(6, 8))
    axes.imshow(confounds.select_dtypes("number").to_numpy()[:, :20], aspect="auto")
    figure.savefig(path.with_name("design-matrix.png"), dpi=90)


def _worker_ours(data: Path, output: Path) -> None:
    # What the ``laion-fmri-glm`` console script does, so that the process can
    # report its own peak memory when the command is done.
    from laion_fmri_dataloader.cli import main

    arguments = ["glm", str(data), str(output), "participant"]
    code = main([*arguments, "--force"])
    if code:
        raise SystemExit(code)


WORKERS = {"ours": _worker_ours, "nilearn": _worker_nilearn, "floor": _worker_floor}


def run_method(method: str, data: Path, output: Path) -> dict:
    """Run one method in a fresh process: wall and CPU seconds, peak RSS (MiB)."""
    shutil.rmtree(output, ignore_errors=True)
    peak_file = output.with_name(output.name + ".peak")
    command = [sys.executable, __file__, "--worker", method, str(data), str(output)]
    start = time.perf_counter()
    process = subprocess.Popen(
        [*command, "--peak-file", str(peak_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # wait4 gives this child's own CPU time.
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(
            f"{method} failed ({process.returncode}): {process.stderr.read().decode()}"
        )
    process.stderr.close()
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": float(peak_file.read_text()),
    }


def agreement(data: Path, ours: Path, nilearn: Path) -> dict:
    """Max |dz| (unclipped voxels), share above 1e-3, max relative effect gap."""
    from laion_fmri_dataloader.contrasts import STANDARD_CONTRASTS
    from laion_fmri_dataloader.io.files import load_image

    mask = np.asanyarray(load_image(inputs(data)["mask"]).dataobj) > 0
    max_dz = max_rel_effect = 0.0
    above, compared = 0, 0
    for name in STANDARD_CONTRASTS:
        maps = {}
        for label, root in (("ours", ours), ("nilearn", nilearn)):
            for stat in ("z", "effect"):
                image = load_image(_map_path(root, name, stat))
                maps[label, stat] = np.asanyarray(image.dataobj)[mask]
        z_ref = maps["nilearn", "z"]
        unclipped = np.abs(z_ref) < NILEARN_Z_CEILING
        dz = np.abs(maps["ours", "z"] - z_ref)[unclipped]
        max_dz = max(max_dz, dz.max())
        # A voxel whose AR(1) coefficient lies on a bin edge may fall in the
        # neighbouring bin in float32; the share says how rare that is.
        above, compared = above + int((dz > 1e-3).sum()), compared + dz.size
        effect_ref = maps["nilearn", "effect"]
        difference = np.abs(maps["ours", "effect"] - effect_ref).max()
        max_rel_effect = max(max_rel_effect, difference / np.abs(effect_ref).max())
    return {
        "max_abs_dz": float(max_dz),
        "share_dz_over_1e-3": above / compared,
        "max_rel_effect": float(max_rel_effect),
    }


def compare_gzip(data: Path, repeat: int) -> list[dict]:
    """Time every reader and writer considered for ``files``, best of ``repeat``.

    Readers decompress the BOLD run into an array (checked equal to nibabel's);
    writers compress the 24 maps of a subject at the level ``files`` would use.
    """
    import gzip
    import io

    import nibabel as nib
    import zlib_ng.gzip_ng
    import zlib_ng.gzip_ng_threaded

    from laion_fmri_dataloader.io.files import load_image

    bold_path = inputs(data)["bold"]
    mask = np.asanyarray(nib.load(inputs(data)["mask"]).dataobj) > 0

    def header_then_readinto(opener):
        def read():
            with opener(bold_path) as stream:
                header = nib.Nifti1Header.from_fileobj(stream)
                stream.read(int(header.get_data_offset()) - stream.tell())
                data = np.empty(
                    header.get_data_shape(), header.get_data_dtype(), order="F"
                )
                buffer = memoryview(data.reshape(-1, order="F")).cast("B")
                filled = 0
                while filled < buffer.nbytes:
                    filled += stream.readinto(buffer[filled : filled + (1 << 23)])
                return data

        return read

    readers = {
        "nibabel (gzip)": lambda: np.asanyarray(
            nib.load(bold_path, keep_file_open=False).dataobj
        ),
        "nibabel (indexed_gzip)": lambda: np.asanyarray(
            nib.load(bold_path, keep_file_open=True).dataobj
        ),
        "zlib_ng.gzip_ng": header_then_readinto(zlib_ng.gzip_ng.open),
        "zlib_ng.gzip_ng_threaded": header_then_readinto(zlib_ng.gzip_ng_threaded.open),
        "files.load_image (chosen)": lambda: np.asanyarray(
            load_image(bold_path).dataobj
        ),
    }
    # Candidates that are not dependencies of the package: timed when installed.
    try:
        import isal.igzip
        import isal.igzip_threaded

        readers["isal.igzip"] = header_then_readinto(isal.igzip.open)
        readers["isal.igzip_threaded"] = header_then_readinto(isal.igzip_threaded.open)
    except ImportError:
        isal = None
    try:
        import rapidgzip

        readers["rapidgzip (2 threads)"] = header_then_readinto(
            lambda path: rapidgzip.open(str(path), parallelization=2)
        )
    except ImportError:
        pass
    volume = np.asanyarray(nib.load(bold_path).dataobj[..., 0])
    volume = np.where(mask, volume, 0).astype(np.float32)
    image = nib.Nifti1Image(volume, nib.load(bold_path).affine)

    def write_maps(gzip_file):
        def write():
            for _ in range(24):
                buffer = io.BytesIO()
                with gzip_file(
                    filename="", mode="wb", fileobj=buffer, compresslevel=1, mtime=0
                ) as stream:
                    image.to_file_map({"image": nib.FileHolder(fileobj=stream)})
            return buffer.getvalue()

        return write

    writers = {
        "gzip level 1 (stdlib zlib, chosen)": write_maps(gzip.GzipFile),
        "zlib_ng level 1": write_maps(zlib_ng.gzip_ng.GzipFile),
    }
    if isal is not None:
        writers["isal level 1"] = write_maps(isal.igzip.GzipFile)
    reference = readers["nibabel (gzip)"]()
    rows = []
    for kind, options in (("read BOLD", readers), ("write 24 maps", writers)):
        best = {name: (np.inf, np.inf) for name in options}
        sizes = {}
        for _ in range(repeat):
            for name, function in options.items():
                wall, cpu = time.perf_counter(), time.process_time()
                result = function()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
                if kind == "read BOLD":
                    assert np.array_equal(result, reference), name
                else:
                    sizes[name] = len(result)
                    assert function() == result, f"{name} is not deterministic"
                del result
        for name, (wall, cpu) in best.items():
            row = {"task": kind, "option": name, "wall_s": wall, "cpu_s": cpu}
            if name in sizes:
                row["bytes_per_map"] = sizes[name]
            rows.append(row)
    return rows


def benchmark(data: Path, repeat: int = 2, methods: tuple[str, ...] = METHODS) -> dict:
    """Run the methods interleaved ``repeat`` times; best times, worst peaks."""
    import nibabel as nib

    files = inputs(data)
    shape = nib.load(files["bold"]).shape
    mask = np.asanyarray(nib.load(files["mask"]).dataobj) > 0
    n_voxels = int(mask.sum())
    row = {
        "benchmark": "end_to_end_participant",
        "grid": list(shape[:3]),
        "volumes": shape[3],
        "brain_voxels": n_voxels,
        "bold_gz_mb": round(files["bold"].stat().st_size / 2**20, 1),
        "full_4d_float32_mb": round(np.prod(shape) * 4 / 2**20, 1),
        "masked_float32_mb": round(n_voxels * shape[3] * 4 / 2**20, 1),
    }
    with tempfile.TemporaryDirectory(prefix="bench-end-to-end-") as tmp:
        outputs = {method: Path(tmp) / method for method in methods}
        runs = {method: [] for method in methods}
        for _ in range(repeat):
            for method in methods:
                runs[method].append(run_method(method, data, outputs[method]))
        for method, measured in runs.items():
            row[f"{method}_wall_s"] = round(min(r["wall_s"] for r in measured), 2)
            row[f"{method}_cpu_s"] = round(min(r["cpu_s"] for r in measured), 2)
            row[f"{method}_peak_rss_mb"] = round(
                max(r["peak_rss_mb"] for r in measured), 1
            )
        if "ours" in methods and "nilearn" in methods:
            for key, value in agreement(
                data, outputs["ours"], outputs["nilearn"]
            ).items():
                row[key] = float(f"{value:.3g}")
    for clock in ("wall", "cpu"):
        if {"ours", "nilearn"} <= set(methods):
            row[f"speedup_{clock}"] = round(
                row[f"nilearn_{clock}_s"] / row[f"ours_{clock}_s"], 2
            )
        if {"ours", "floor"} <= set(methods):
            row[f"ours_over_floor_{clock}"] = round(
                row[f"ours_{clock}_s"] / row[f"floor_{clock}_s"], 2
            )
    if "ours" in methods:
        row["ours_peak_over_masked"] = round(
            row["ours_peak_rss_mb"] / row["masked_float32_mb"], 2
        )
        row["ours_peak_over_full_4d"] = round(
            row["ours_peak_rss_mb"] / row["full_4d_float32_mb"], 2
        )
    return row


def main(argv: list[str] | None = None) -> dict | None:
    """Parse arguments, run, print the row (and the gzip comparison)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--resolution", type=float, default=2.0, help="mm")
    parser.add_argument("--volumes", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=2, help="best of N")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    parser.add_argument("--readers", action="store_true", help="compare gzip codecs")
    parser.add_argument("--json", type=Path, help="also write the row here")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--peak-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        WORKERS[args.worker](*args.paths)
        args.peak_file.write_text(f"{peak_rss_mb():.1f}")
        return None
    data = simulated_run(args.data, args.resolution, args.volumes)
    row = benchmark(data, args.repeat, tuple(args.methods))
    if args.readers:
        row["gzip"] = compare_gzip(data, args.repeat)
    print(json.dumps(row, indent=2))
    if args.json:
        args.json.write_text(json.dumps(row, indent=2) + "\n")
    return row


if __name__ == "__main__":
    main()
