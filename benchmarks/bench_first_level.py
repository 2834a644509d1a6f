"""First level on one run: our AR(1) engine against nilearn, side by side.

Builds one run of the asked size with ``simulate.data_gen`` (``block_design``
and ``ar1_series``: AR(1) noise with voxel-varying coefficients, baseline near
1000, block responses to face/scene/object/baseline, a slow drift), then fits
the six standard contrasts with

* ``ours``: ``laion_fmri_dataloader.stats.engine.fit_ar1_contrasts``;
* ``run_glm``: nilearn's ``mean_scaling`` + ``run_glm`` + ``compute_contrast``,
  what ``FirstLevelModel`` does once the data are masked;
* ``first_level_model``: nilearn's ``FirstLevelModel(noise_model="ar1",
  minimize_memory=True)`` fit on a NIfTI image of the same voxels, then
  ``compute_contrast(output_type="all")``.

Every method runs in a fresh subprocess that loads the same float32 array, so
the peak resident memory (``VmHWM``, which sees BLAS buffers that
tracemalloc misses) is the method's own.  The parent checks agreement on z,
effect and t, and prints one row as a dict (``--json`` also writes it).

    python benchmarks/bench_first_level.py --voxels 230000 --volumes 300
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from _memory import peak_rss_mb
from laion_fmri_dataloader.contrasts import STANDARD_CONTRASTS
from laion_fmri_dataloader.simulate.data_gen import (
    ar1_series,
    block_design,
    standard_contrast_vectors,
    voxels_as_nifti,
)

METHODS = ("ours", "run_glm", "first_level_model")
# nilearn clips p-values at 1e-300; beyond this |z| its values are a floor.
NILEARN_Z_CEILING = 37.0
STATS = ("effect", "variance", "t", "z")


def build_run(n_voxels: int, n_volumes: int, tr: float, seed: int, workdir: Path):
    """Write the design (with column names) and the float32 data to workdir."""
    design = block_design(n_volumes, tr, seed)
    np.save(workdir / "data.npy", ar1_series(design, n_voxels, seed + 1))
    design.to_pickle(workdir / "design.pkl")
    return design.shape[1]


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _fit_ours(data, design, tr):
    from laion_fmri_dataloader.stats.engine import fit_ar1_contrasts

    start = time.perf_counter()
    results = fit_ar1_contrasts(
        data, design.to_numpy(), standard_contrast_vectors(list(design.columns))
    )
    seconds = time.perf_counter() - start
    maps = {
        name: {stat: getattr(result, stat) for stat in STATS}
        for name, result in results.items()
    }
    return seconds, maps


def _fit_run_glm(data, design, tr):
    from nilearn.glm.contrasts import compute_contrast
    from nilearn.glm.first_level import mean_scaling, run_glm

    start = time.perf_counter()
    scaled, _ = mean_scaling(data)
    labels, results = run_glm(scaled, design.to_numpy(), noise_model="ar1", bins=100)
    del scaled
    maps = {}
    for name, vector in standard_contrast_vectors(list(design.columns)).items():
        contrast = compute_contrast(labels, results, vector)
        maps[name] = {
            "effect": contrast.effect_size(),
            "variance": contrast.effect_variance(),
            "t": contrast.stat(),
            "z": contrast.z_score(),
        }
    return time.perf_counter() - start, maps


def _fit_first_level_model(img_and_mask, design, tr):
    from nilearn.glm.first_level import FirstLevelModel

    img, mask = img_and_mask
    start = time.perf_counter()
    model = FirstLevelModel(
        t_r=tr, noise_model="ar1", mask_img=mask, minimize_memory=True
    )
    model.fit(img, design_matrices=[design])
    images = {
        name: model.compute_contrast(vector, output_type="all")
        for name, vector in standard_contrast_vectors(list(design.columns)).items()
    }
    seconds = time.perf_counter() - start
    keys = {"effect": "effect_size", "variance": "effect_variance", "t": "stat"}
    keys["z"] = "z_score"
    maps = {
        name: {
            stat: model.masker_.transform(outputs[key]).ravel()
            for stat, key in keys.items()
        }
        for name, outputs in images.items()
    }
    return seconds, maps


def worker(method: str, workdir: Path, tr: float) -> dict:
    """Run one method on the saved run; save its maps, return time and memory."""
    import pandas as pd

    warnings.simplefilter("ignore")
    design = pd.read_pickle(workdir / "design.pkl")
    # Libraries first, so that the baseline holds them and the peak over it
    # only what the method allocates.
    if method == "ours":
        import laion_fmri_dataloader.stats.engine  # noqa: F401
    else:
        import nilearn.glm.first_level  # noqa: F401
    baseline_mb = _rss_mb()
    if method == "first_level_model":
        subject = voxels_as_nifti(np.load(workdir / "data.npy"))
        fit = _fit_first_level_model
    else:
        subject = np.load(workdir / "data.npy")
        fit = _fit_ours if method == "ours" else _fit_run_glm
    seconds, maps = fit(subject, design, tr)
    peak_mb = peak_rss_mb()
    np.savez(
        workdir / f"{method}.npz",
        **{
            f"{name}.{stat}": np.asarray(values, dtype=np.float64)
            for name, stats in maps.items()
            for stat, values in stats.items()
        },
    )
    return {
        "seconds": seconds,
        "baseline_mb": baseline_mb,
        "peak_mb": peak_mb,
    }


def _run_worker(method: str, workdir: Path, tr: float) -> dict:
    command = [sys.executable, __file__, "--worker", method]
    command += ["--workdir", str(workdir), "--tr", str(tr)]
    completed = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def agreement(workdir: Path, reference: str) -> dict:
    """Largest differences of ours from a nilearn method over all contrasts."""
    ours = np.load(workdir / "ours.npz")
    theirs = np.load(workdir / f"{reference}.npz")
    max_dz = max_rel_effect = max_rel_t = 0.0
    for name in STANDARD_CONTRASTS:
        z_ref = theirs[f"{name}.z"]
        unclipped = np.abs(z_ref) < NILEARN_Z_CEILING
        max_dz = max(max_dz, np.abs(ours[f"{name}.z"] - z_ref)[unclipped].max())
        for stat in ("effect", "t"):
            ref = theirs[f"{name}.{stat}"]
            rel = np.abs(ours[f"{name}.{stat}"] - ref).max() / np.abs(ref).max()
            if stat == "effect":
                max_rel_effect = max(max_rel_effect, rel)
            else:
                max_rel_t = max(max_rel_t, rel)
    return {
        "max_abs_dz": float(max_dz),
        "max_rel_effect": float(max_rel_effect),
        "max_rel_t": float(max_rel_t),
    }


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxels", type=int, default=230_000)
    parser.add_argument("--volumes", type=int, default=300)
    parser.add_argument("--tr", type=float, default=1.9, help="seconds")
    parser.add_argument("--repeat", type=int, default=1, help="best time of N")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the row here")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.worker, args.workdir, args.tr)))
        return None

    methods = ["ours", *(m for m in args.methods if m != "ours")]
    with tempfile.TemporaryDirectory(prefix="bench-first-level-") as tmp:
        workdir = Path(tmp)
        n_regressors = build_run(args.voxels, args.volumes, args.tr, args.seed, workdir)
        array_mb = args.voxels * args.volumes * 4 / 2**20
        row = {
            "benchmark": "first_level_ar1",
            "voxels": args.voxels,
            "volumes": args.volumes,
            "regressors": n_regressors,
            "contrasts": len(STANDARD_CONTRASTS),
            "cpus": len(os.sched_getaffinity(0)),
            "array_mb": round(array_mb, 1),
        }
        for method in methods:
            runs = [_run_worker(method, workdir, args.tr) for _ in range(args.repeat)]
            row[f"{method}_s"] = round(min(run["seconds"] for run in runs), 3)
            peak = max(run["peak_mb"] for run in runs)
            baseline = min(run["baseline_mb"] for run in runs)
            row[f"{method}_peak_rss_mb"] = round(peak, 1)
            # Everything the method holds, the loaded array included, over
            # the size of that array: 2.0 means one extra copy at the peak.
            row[f"{method}_memory_over_array"] = round((peak - baseline) / array_mb, 2)
            if method != "ours":
                row[f"speedup_vs_{method}"] = round(
                    row[f"{method}_s"] / row["ours_s"], 1
                )
                for key, value in agreement(workdir, method).items():
                    row[f"{key}_vs_{method}"] = float(f"{value:.3g}")
    print(row)
    if args.json:
        args.json.write_text(json.dumps(row, indent=2) + "\n")
    return row


if __name__ == "__main__":
    main()
