"""Benchmark: sign-flip max-T permutation test against nilearn's ``permuted_ols``.

Both run on the same null group data (standard normal effects, one map per
subject) in fresh subprocesses, so that each peak resident memory (``VmHWM``)
is its own. nilearn is run with fewer permutations (``--nilearn-perm``) and its time
extrapolated linearly to ``--n-perm``: its fixed cost (a run with ``n_perm=0``)
plus the per-permutation cost times ``--n-perm``. Its FWE cutoff is the 95th
percentile of its ``h0_max_t``, with the 95% interval of that percentile from the
order statistics of a sample of ``--nilearn-perm`` maxima; ours must lie inside.

Usage::

    python benchmarks/bench_permutation.py --subjects 20 --voxels 230000 \\
        --n-perm 10000 --nilearn-perm 200 --json bench_permutation.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from scipy import stats

from _memory import peak_rss_mb
from laion_fmri_dataloader.simulate.data_gen import null_group_effects

ALPHA = 0.05


def _run_ours(effects: np.ndarray, n_perm: int) -> dict:
    from laion_fmri_dataloader.stats.inference import sign_flip_max_t

    sign_flip_max_t(effects[:, :100], n_perm=200)
    start = time.perf_counter()
    result = sign_flip_max_t(effects, n_perm=n_perm, alpha=ALPHA, seed=0)
    return {
        "seconds": time.perf_counter() - start,
        "t_cutoff": result.t_cutoff,
        "max_t": result.max_t.tolist(),
    }


def _run_nilearn(effects: np.ndarray, n_perm: int) -> dict:
    from nilearn.mass_univariate import permuted_ols

    def run(n: int) -> tuple[float, dict]:
        start = time.perf_counter()
        output = permuted_ols(
            tested_vars=np.ones((effects.shape[0], 1)),
            target_vars=effects,
            model_intercept=False,
            n_perm=n,
            two_sided_test=True,
            random_state=0,
            n_jobs=1,
            output_type="dict",
            verbose=0,
        )
        return time.perf_counter() - start, output

    fixed_seconds, _ = run(0)
    seconds, output = run(n_perm)
    return {
        "seconds": seconds,
        "fixed_seconds": fixed_seconds,
        "max_t": output["h0_max_t"][0].tolist(),
    }


def _worker(args: argparse.Namespace) -> None:
    if args.one_core and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    effects = null_group_effects(
        np.random.default_rng(args.seed), args.subjects, (args.voxels,)
    )
    # Import (and warm up) before the baseline so the increment is the test's own.
    if args.worker == "ours":
        import laion_fmri_dataloader.stats.inference  # noqa: F401

        baseline_mb = peak_rss_mb()
        row = _run_ours(effects, args.n_perm)
    else:
        import nilearn.mass_univariate  # noqa: F401

        baseline_mb = peak_rss_mb()
        row = _run_nilearn(effects, args.nilearn_perm)
    row["peak_rss_mb"] = peak_rss_mb()
    row["rss_increment_mb"] = row["peak_rss_mb"] - baseline_mb
    json.dump(row, sys.stdout)


def _in_subprocess(args: argparse.Namespace, worker: str, one_core: bool) -> dict:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        worker,
        "--subjects",
        str(args.subjects),
        "--voxels",
        str(args.voxels),
        "--n-perm",
        str(args.n_perm),
        "--nilearn-perm",
        str(args.nilearn_perm),
        "--seed",
        str(args.seed),
    ]
    if one_core:
        command.append("--one-core")
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def _percentile_interval(sample: np.ndarray, quantile: float) -> tuple[float, float]:
    # Distribution-free 95% interval of a quantile: the order statistics whose ranks
    # bracket the binomial(n, quantile) central 95%.
    ordered = np.sort(sample)
    n = ordered.size
    low = int(stats.binom.ppf(0.025, n, quantile))
    high = int(stats.binom.ppf(0.975, n, quantile))
    return float(ordered[max(low - 1, 0)]), float(ordered[min(high, n - 1)])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--voxels", type=int, default=230_000)
    parser.add_argument("--n-perm", type=int, default=10_000)
    parser.add_argument(
        "--nilearn-perm",
        type=int,
        default=200,
        help="permutations actually run by nilearn; its time is extrapolated",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the data")
    parser.add_argument("--json", metavar="OUT", help="write the row here as JSON")
    parser.add_argument("--worker", choices=["ours", "nilearn"], help=argparse.SUPPRESS)
    parser.add_argument("--one-core", action="store_true", help=argparse.SUPPRESS)
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
        The row: times in seconds, speed-up ratios, FWE |t| cutoffs, peak resident
        memory in MiB; None in a worker subprocess.
    """
    args = _parser().parse_args(argv)
    if args.worker:
        _worker(args)
        return None
    ours = _in_subprocess(args, "ours", one_core=False)
    ours_one_core = _in_subprocess(args, "ours", one_core=True)
    nilearn = _in_subprocess(args, "nilearn", one_core=False)
    per_perm = (nilearn["seconds"] - nilearn["fixed_seconds"]) / args.nilearn_perm
    nilearn_seconds = nilearn["fixed_seconds"] + per_perm * args.n_perm
    nilearn_max_t = np.asarray(nilearn["max_t"])
    nilearn_cutoff = float(np.percentile(nilearn_max_t, 100 * (1 - ALPHA)))
    interval = _percentile_interval(nilearn_max_t, 1 - ALPHA)
    row = {
        "subjects": args.subjects,
        "voxels": args.voxels,
        "n_perm": args.n_perm,
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else 1,
        "ours_seconds": ours["seconds"],
        "ours_one_core_seconds": ours_one_core["seconds"],
        "nilearn_perm_run": args.nilearn_perm,
        "nilearn_seconds_measured": nilearn["seconds"],
        "nilearn_seconds_extrapolated": nilearn_seconds,
        "speedup": nilearn_seconds / ours["seconds"],
        "speedup_one_core": nilearn_seconds / ours_one_core["seconds"],
        "ours_t_cutoff": ours["t_cutoff"],
        "nilearn_t_cutoff": nilearn_cutoff,
        "nilearn_t_cutoff_ci95": interval,
        "cutoff_within_mc_error": interval[0] <= ours["t_cutoff"] <= interval[1],
        "ours_peak_rss_mb": ours["peak_rss_mb"],
        "ours_rss_increment_mb": ours["rss_increment_mb"],
        "nilearn_peak_rss_mb": nilearn["peak_rss_mb"],
    }
    print(json.dumps(row, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(row, handle, indent=2)
    return row


if __name__ == "__main__":
    main()
