"""Benchmark: TFCE and cluster-extent FWE against nilearn's non_parametric_inference.

Null group data on nilearn's MNI152 brain mask (2 mm: 235,375 voxels): smooth
Gaussian effect maps (FWHM 6 mm), one per subject.  Each method runs in a fresh
subprocess, so that each peak resident memory (``VmHWM``) is its own:

- ours, ``sign_flip_max_t(..., spatial=SpatialInference(...))`` with TFCE only and
  with cluster extent only (each with max |t|, as the pipeline computes them),
  ``--n-perm`` sign flips on every core;
- nilearn, ``non_parametric_inference(..., tfce=True)`` and
  ``non_parametric_inference(..., threshold=0.001)``, ``n_jobs=1``, run with
  ``--nilearn-perm`` (TFCE) and ``--nilearn-cluster-perm`` permutations and
  extrapolated linearly to ``--n-perm``: its fixed cost (which includes the
  observed map's TFCE) plus the per-permutation cost times ``--n-perm``, both from
  a run with one permutation and one with one more than asked.  nilearn's TFCE
  takes seconds per permutation, so it is run with a few only, and the row says
  how many.

Times are wall clock and CPU (user + system, every thread): on a shared machine
the CPU ratio is the steadier one.  Agreement: the observed TFCE map (ours
against nilearn's ``tfce`` output, largest relative difference) and the observed
cluster sizes (nilearn's ``size`` output, voxels that differ); the null maxima on
identical flips are compared by the tests (tests/test_tfce.py,
tests/test_cluster_inference.py).

Usage::

    python benchmarks/bench_tfce.py --resolution 2 --subjects 20 --n-perm 10000 \\
        --nilearn-perm 3 --json bench_tfce.json
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

import numpy as np

from _memory import peak_rss_mb

ALPHA = 0.05
CLUSTER_THRESHOLD = 0.001
FWHM_MM = 6.0


def make_group(resolution: float, n_subjects: int, seed: int):
    """Brain mask (3-D bool), affine and null effects (n_subjects, n_voxels)."""
    from nilearn.datasets import load_mni152_brain_mask

    from laion_fmri_dataloader.simulate.data_gen import null_group_effects

    mask_image = load_mni152_brain_mask(resolution=resolution)
    mask = np.asanyarray(mask_image.dataobj) > 0
    rng = np.random.default_rng(seed)
    fwhm = FWHM_MM / resolution
    effects = null_group_effects(rng, n_subjects, mask.shape, fwhm=fwhm)
    effects = np.ascontiguousarray(effects[:, mask.ravel()])
    return mask, mask_image.affine, effects


def _run_ours(mask, effects, n_perm: int, which: str) -> dict:
    from laion_fmri_dataloader.stats.inference import SpatialInference, sign_flip_max_t
    from laion_fmri_dataloader.stats.tfce import TFCEParameters

    spatial = SpatialInference.from_mask(
        mask,
        tfce=None if which == "cluster" else TFCEParameters(),
        cluster_threshold=None if which == "tfce" else CLUSTER_THRESHOLD,
    )
    # Compile (or load the compiled code) before the clock starts.
    small = np.zeros(mask.shape, dtype=bool)
    small[:6, :6, :6] = True
    warm = SpatialInference.from_mask(small)
    sign_flip_max_t(np.random.default_rng(0).normal(size=(8, 216)), spatial=warm)
    start, cpu = time.perf_counter(), time.process_time()
    result = sign_flip_max_t(
        effects, n_perm=n_perm, alpha=ALPHA, seed=0, spatial=spatial
    )
    row = {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
        "n_perm": result.n_perm,
    }
    if result.tfce is not None:
        row["tfce_cutoff"] = result.tfce.cutoff
        row["tfce_map"] = result.tfce.tfce.tolist()
    if result.cluster is not None:
        row["cluster_cutoff"] = result.cluster.cutoff
        row["cluster_forming_t"] = result.cluster.forming_t
        row["cluster_sizes"] = result.cluster.clusters.voxel_sizes.tolist()
    return row


def _run_nilearn(mask, affine, effects, n_perm: int, which: str) -> dict:
    import nibabel as nib
    import pandas as pd
    from nilearn.glm.second_level import non_parametric_inference

    def volume(values):
        data = np.zeros(mask.shape)
        data[mask] = values
        return nib.Nifti1Image(data, affine)

    images = [volume(subject) for subject in effects]
    mask_image = nib.Nifti1Image(mask.astype(np.uint8), affine)
    options = {"tfce": True} if which == "tfce" else {"threshold": CLUSTER_THRESHOLD}

    def run(n: int) -> tuple[float, float, dict]:
        start, cpu = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outputs = non_parametric_inference(
                images,
                design_matrix=pd.DataFrame({"intercept": np.ones(len(images))}),
                mask=mask_image,
                n_perm=n,
                two_sided_test=True,
                random_state=0,
                n_jobs=1,
                **options,
            )
        return time.perf_counter() - start, time.process_time() - cpu, outputs

    # nilearn refuses n_perm=0 here: the fixed cost is taken from a run with one.
    one_seconds, one_cpu, _ = run(1)
    seconds, cpu, outputs = run(1 + n_perm)
    per_perm = (seconds - one_seconds) / n_perm
    cpu_per_perm = (cpu - one_cpu) / n_perm
    row = {
        "seconds": seconds,
        "fixed_seconds": one_seconds - per_perm,
        "seconds_per_perm": per_perm,
        "fixed_cpu_seconds": one_cpu - cpu_per_perm,
        "cpu_seconds_per_perm": cpu_per_perm,
        "n_perm": 1 + n_perm,
    }
    if which == "tfce":
        row["tfce_map"] = np.asarray(outputs["tfce"].get_fdata())[mask].tolist()
    else:
        row["cluster_sizes"] = np.asarray(outputs["size"].get_fdata())[mask].tolist()
    return row


def _worker(args: argparse.Namespace) -> None:
    mask, affine, effects = make_group(args.resolution, args.subjects, args.seed)
    method, which = args.worker.split("-")
    # Import before the baseline so that the increment is the test's own.
    if method == "ours":
        import laion_fmri_dataloader.stats.inference  # noqa: F401

        baseline_mb = peak_rss_mb()
        row = _run_ours(mask, effects, args.n_perm, which)
    else:
        import nilearn.glm.second_level  # noqa: F401

        baseline_mb = peak_rss_mb()
        n_perm = args.nilearn_perm if which == "tfce" else args.nilearn_cluster_perm
        row = _run_nilearn(mask, affine, effects, n_perm, which)
    row["peak_rss_mb"] = peak_rss_mb()
    row["rss_increment_mb"] = row["peak_rss_mb"] - baseline_mb
    row["voxels"] = int(mask.sum())
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(row, handle)


def _in_subprocess(args: argparse.Namespace, worker: str) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "row.json")
        command = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            worker,
            "--out",
            out,
            "--resolution",
            str(args.resolution),
            "--subjects",
            str(args.subjects),
            "--n-perm",
            str(args.n_perm),
            "--nilearn-perm",
            str(args.nilearn_perm),
            "--nilearn-cluster-perm",
            str(args.nilearn_cluster_perm),
            "--seed",
            str(args.seed),
        ]
        subprocess.run(command, check=True)
        with open(out, encoding="utf-8") as handle:
            return json.load(handle)


def _extrapolated(nilearn: dict, n_perm: int, clock: str = "seconds") -> float:
    fixed = nilearn["fixed_cpu_seconds" if clock == "cpu" else "fixed_seconds"]
    per_perm = nilearn["cpu_seconds_per_perm" if clock == "cpu" else "seconds_per_perm"]
    return fixed + per_perm * n_perm


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=2, help="mm")
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--n-perm", type=int, default=10_000)
    parser.add_argument(
        "--nilearn-perm",
        type=int,
        default=3,
        help="permutations actually run by nilearn's TFCE; its time is extrapolated",
    )
    parser.add_argument(
        "--nilearn-cluster-perm",
        type=int,
        default=20,
        help="the same for nilearn's cluster path",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the data")
    parser.add_argument("--json", metavar="OUT", help="write the row here as JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> dict | None:
    """Run the benchmark and print (and optionally save) one row.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments; ``sys.argv[1:]`` by default.

    Returns
    -------
    dict or None
        The row: times in seconds, speed-up ratios, critical values, agreement of
        the observed maps, peak resident memory in MiB; None in a worker.
    """
    args = _parser().parse_args(argv)
    if args.worker:
        _worker(args)
        return None
    ours_tfce = _in_subprocess(args, "ours-tfce")
    ours_cluster = _in_subprocess(args, "ours-cluster")
    nilearn_tfce = _in_subprocess(args, "nilearn-tfce")
    nilearn_cluster = _in_subprocess(args, "nilearn-cluster")
    tfce_seconds = _extrapolated(nilearn_tfce, args.n_perm)
    cluster_seconds = _extrapolated(nilearn_cluster, args.n_perm)
    tfce_cpu = _extrapolated(nilearn_tfce, args.n_perm, "cpu")
    cluster_cpu = _extrapolated(nilearn_cluster, args.n_perm, "cpu")
    ours_map, nilearn_map = (
        np.asarray(ours_tfce["tfce_map"]),
        np.asarray(nilearn_tfce["tfce_map"]),
    )
    row = {
        "resolution_mm": args.resolution,
        "subjects": args.subjects,
        "voxels": ours_tfce["voxels"],
        "n_perm": args.n_perm,
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else 1,
        "ours_tfce_seconds": ours_tfce["seconds"],
        "nilearn_tfce_perm_run": args.nilearn_perm,
        "nilearn_tfce_seconds_measured": nilearn_tfce["seconds"],
        "nilearn_tfce_seconds_per_perm": nilearn_tfce["seconds_per_perm"],
        "nilearn_tfce_seconds_extrapolated": tfce_seconds,
        "tfce_speedup": tfce_seconds / ours_tfce["seconds"],
        "ours_tfce_cpu_seconds": ours_tfce["cpu_seconds"],
        "nilearn_tfce_cpu_seconds_extrapolated": tfce_cpu,
        "tfce_speedup_cpu": tfce_cpu / ours_tfce["cpu_seconds"],
        "ours_tfce_cutoff": ours_tfce["tfce_cutoff"],
        "tfce_map_max_rel_diff": float(
            np.abs(ours_map - nilearn_map).max() / np.abs(nilearn_map).max()
        ),
        "ours_cluster_seconds": ours_cluster["seconds"],
        "nilearn_cluster_perm_run": args.nilearn_cluster_perm,
        "nilearn_cluster_seconds_measured": nilearn_cluster["seconds"],
        "nilearn_cluster_seconds_extrapolated": cluster_seconds,
        "cluster_speedup": cluster_seconds / ours_cluster["seconds"],
        "ours_cluster_cpu_seconds": ours_cluster["cpu_seconds"],
        "nilearn_cluster_cpu_seconds_extrapolated": cluster_cpu,
        "cluster_speedup_cpu": cluster_cpu / ours_cluster["cpu_seconds"],
        "ours_cluster_cutoff": ours_cluster["cluster_cutoff"],
        "cluster_forming_t": ours_cluster["cluster_forming_t"],
        "cluster_size_voxels_differing": int(
            np.sum(
                np.asarray(ours_cluster["cluster_sizes"])
                != np.asarray(nilearn_cluster["cluster_sizes"])
            )
        ),
        "ours_tfce_peak_rss_mb": ours_tfce["peak_rss_mb"],
        "ours_tfce_rss_increment_mb": ours_tfce["rss_increment_mb"],
        "ours_cluster_peak_rss_mb": ours_cluster["peak_rss_mb"],
        "nilearn_tfce_peak_rss_mb": nilearn_tfce["peak_rss_mb"],
        "nilearn_cluster_peak_rss_mb": nilearn_cluster["peak_rss_mb"],
    }
    print(json.dumps(row, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(row, handle, indent=2)
    return row


if __name__ == "__main__":
    main()
