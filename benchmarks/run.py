"""Every benchmark, against nilearn, with a results table and a scaling plot.

What ``make bench`` runs.  In order:

1. first level, the AR(1) engine on one run (``bench_first_level``): ours
   against nilearn's ``FirstLevelModel``, max |dz|, peak memory;
2. end to end, one subject as a user runs it (``bench_end_to_end``): the
   ``laion-fmri-glm glm ... participant`` command against the same work written
   with nilearn, and the I/O floor; the gzip readers and writers considered;
3. group sign-flip permutations (``bench_permutation``): ours against
   nilearn's ``permuted_ols`` (``n_jobs=1``), nilearn's time extrapolated
   from fewer permutations, FWE cutoffs compared;
4. TFCE and cluster-extent FWE (``bench_tfce``): ours against nilearn's
   ``non_parametric_inference(tfce=True)`` and ``(threshold=0.001)``
   (``n_jobs=1``) on the MNI152 brain mask, nilearn's time extrapolated from a
   few permutations, the observed TFCE map and cluster sizes compared;
5. scaling of ours: voxels, volumes, subjects, permutations.

Side-by-side numbers come from the same run, interleaved where the benchmark
repeats, best (min) of the repeats; the machine and its load average are
written beside them, because the machine may be shared.  Writes
``benchmarks/RESULTS.md`` and ``benchmarks/scaling.png``.

    python benchmarks/run.py            # full size, 10-20 minutes
    python benchmarks/run.py --quick    # reduced sizes, 2-3 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import bench_end_to_end  # noqa: E402
import bench_first_level  # noqa: E402
import bench_permutation  # noqa: E402
import bench_tfce  # noqa: E402

#: Sizes of the full run and of ``--quick``.
SIZES = {
    "full": {
        "voxels": 230_000,
        "volumes": 300,
        "first_level_repeat": 2,
        "resolution": 2.0,
        "end_to_end_repeat": 3,
        "subjects": 20,
        "group_voxels": 230_000,
        "n_perm": 10_000,
        "nilearn_perm": 200,
        "tfce_resolution": 2,
        "tfce_n_perm": 10_000,
        "nilearn_tfce_perm": 3,
        "nilearn_cluster_perm": 20,
        "scaling_voxels": (0.25, 0.5, 1.0),
        "scaling_volumes": (150, 300),
        "scaling_subjects": (10, 20, 40),
        "scaling_perms": (1_000, 5_000, 10_000),
    },
    "quick": {
        "voxels": 50_000,
        "volumes": 150,
        "first_level_repeat": 1,
        "resolution": 4.0,
        "end_to_end_repeat": 1,
        "subjects": 20,
        "group_voxels": 20_000,
        "n_perm": 2_000,
        "nilearn_perm": 100,
        "tfce_resolution": 4,
        "tfce_n_perm": 2_000,
        "nilearn_tfce_perm": 2,
        "nilearn_cluster_perm": 10,
        "scaling_voxels": (0.25, 0.5, 1.0),
        "scaling_volumes": (75, 150),
        "scaling_subjects": (10, 20, 40),
        "scaling_perms": (1_000, 2_000),
    },
}


def machine() -> dict:
    """CPU, cores, Python, numpy and its BLAS, load average now."""
    import nilearn
    import numpy
    from threadpoolctl import threadpool_info

    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            names = [line for line in cpuinfo if line.startswith("model name")]
        model = names[0].split(":", 1)[1].strip() if names else model
    except OSError:
        pass
    blas = [
        f"{pool['internal_api']} {pool.get('version') or ''} "
        f"({pool.get('num_threads')} threads)".replace("  ", " ")
        for pool in threadpool_info()
        if pool["user_api"] == "blas"
    ]
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "memory_gb": round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
        ),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "blas": ", ".join(blas) or "unknown",
        "nilearn": nilearn.__version__,
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }


def _first_level(voxels: int, volumes: int, repeat: int, nilearn: bool) -> dict:
    methods = ["ours", "first_level_model"] if nilearn else ["ours"]
    return bench_first_level.main(
        [
            "--voxels",
            str(voxels),
            "--volumes",
            str(volumes),
            "--repeat",
            str(repeat),
            "--methods",
            *methods,
        ]
    )


def _permutation_ours(subjects: int, voxels: int, n_perm: int) -> dict:
    arguments = ["--subjects", str(subjects), "--voxels", str(voxels)]
    arguments += ["--n-perm", str(n_perm)]
    args = bench_permutation._parser().parse_args(arguments)
    runs = [bench_permutation._in_subprocess(args, "ours", False) for _ in range(2)]
    return min(runs, key=lambda run: run["seconds"])


def run_all(size: dict, log) -> dict:
    """Run every benchmark at ``size``; return their rows."""
    results = {"machine": machine(), "size": size}
    started = time.perf_counter()

    log("first level: ours vs FirstLevelModel")
    results["first_level"] = _first_level(
        size["voxels"], size["volumes"], size["first_level_repeat"], nilearn=True
    )

    log("end to end: laion-fmri-glm participant vs nilearn vs I/O floor")
    resolution = size["resolution"]
    data = bench_end_to_end.simulated_run(
        BENCH_DIR / "_data" / f"end-to-end-{resolution:g}mm",
        resolution,
        size["volumes"],
    )
    results["end_to_end"] = bench_end_to_end.benchmark(data, size["end_to_end_repeat"])
    results["gzip"] = bench_end_to_end.compare_gzip(data, repeat=3)

    log("group permutations: ours vs permuted_ols")
    results["permutation"] = bench_permutation.main(
        [
            "--subjects",
            str(size["subjects"]),
            "--voxels",
            str(size["group_voxels"]),
            "--n-perm",
            str(size["n_perm"]),
            "--nilearn-perm",
            str(size["nilearn_perm"]),
        ]
    )

    log("TFCE and cluster extent: ours vs non_parametric_inference")
    results["tfce"] = bench_tfce.main(
        [
            "--resolution",
            str(size["tfce_resolution"]),
            "--subjects",
            str(size["subjects"]),
            "--n-perm",
            str(size["tfce_n_perm"]),
            "--nilearn-perm",
            str(size["nilearn_tfce_perm"]),
            "--nilearn-cluster-perm",
            str(size["nilearn_cluster_perm"]),
        ]
    )

    log("scaling of ours")
    # Every point is measured here, one after the other, so that the rows of
    # one axis share the machine's load.
    scaling = []
    for fraction in size["scaling_voxels"]:
        voxels = int(size["voxels"] * fraction)
        row = _first_level(voxels, size["volumes"], 2, nilearn=False)
        scaling.append({"axis": "voxels", "x": voxels, "seconds": row["ours_s"]})
    for volumes in size["scaling_volumes"]:
        row = _first_level(size["voxels"], volumes, 2, nilearn=False)
        scaling.append({"axis": "volumes", "x": volumes, "seconds": row["ours_s"]})
    for subjects in size["scaling_subjects"]:
        row = _permutation_ours(subjects, size["group_voxels"], size["n_perm"])
        scaling.append({"axis": "subjects", "x": subjects, "seconds": row["seconds"]})
    for n_perm in size["scaling_perms"]:
        row = _permutation_ours(size["subjects"], size["group_voxels"], n_perm)
        scaling.append({"axis": "permutations", "x": n_perm, "seconds": row["seconds"]})
    order = list(SCALING_LABELS)
    results["scaling"] = sorted(scaling, key=lambda r: (order.index(r["axis"]), r["x"]))
    results["load_average_end"] = [round(value, 2) for value in os.getloadavg()]
    results["total_minutes"] = round((time.perf_counter() - started) / 60, 1)
    return results


SCALING_LABELS = {
    "voxels": "first level: voxels ({volumes} volumes)",
    "volumes": "first level: volumes ({voxels:,} voxels)",
    "subjects": "group: subjects ({group_voxels:,} voxels, {n_perm:,} perms)",
    "permutations": "group: permutations ({subjects} subj., {group_voxels:,} vox.)",
}


def plot_scaling(results: dict, path: Path) -> None:
    """Seconds against size, one small panel per axis, as a compact PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    axes_names = list(SCALING_LABELS)
    figure = Figure(figsize=(11, 2.8))
    panels = figure.subplots(1, len(axes_names))
    for panel, axis in zip(panels, axes_names, strict=True):
        rows = [row for row in results["scaling"] if row["axis"] == axis]
        xs = [row["x"] for row in rows]
        panel.plot(xs, [row["seconds"] for row in rows], "o-", color="tab:blue")
        panel.set_title(
            SCALING_LABELS[axis].format(**results["size"]).replace(": ", ":\n"),
            fontsize=8,
        )
        panel.set_xlabel(axis, fontsize=8)
        panel.set_ylim(bottom=0)
        panel.set_xlim(left=0)
        panel.tick_params(labelsize=7)
        panel.grid(alpha=0.3)
    panels[0].set_ylabel("seconds (ours)", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=72)


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value >= 1 else f"{value * 1000:.0f} ms"


def markdown(results: dict) -> str:
    """RESULTS.md: the machine, the side-by-side table, gzip options, scaling."""
    m, size = results["machine"], results["size"]
    first, e2e = results["first_level"], results["end_to_end"]
    perm, spatial = results["permutation"], results["tfce"]
    grid = "x".join(map(str, e2e["grid"]))
    lines = [
        "# Benchmarks",
        "",
        "Written by `benchmarks/run.py` (`make bench`); "
        f"`{' '.join(['python', 'benchmarks/run.py', *results['argv']])}`, "
        f"{results['date']}, {results['total_minutes']} min.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; Python "
        f"{m['python']}, numpy {m['numpy']} with {m['blas']}; nilearn {m['nilearn']}.",
        f"Load average (1, 5, 15 min) at start {m['load_average']}, at end "
        f"{results['load_average_end']}: the machine was shared, so times are "
        "inflated, but each ratio compares methods run side by side (interleaved, "
        "best of the repeats) under the same load.",
        "",
        "## Ours against nilearn",
        "",
        "| benchmark | ours | nilearn | ratio | agreement "
        "| peak memory (ours / nilearn) |",
        "|---|---:|---:|---:|---|---|",
        f"| first level, AR(1), {first['voxels']:,} voxels x {first['volumes']} volumes"
        f", {first['contrasts']} contrasts (engine on arrays vs `FirstLevelModel`, best"
        f" of {size['first_level_repeat']}) | {_seconds(first['ours_s'])} | "
        f"{_seconds(first['first_level_model_s'])} | "
        f"{first['speedup_vs_first_level_model']:.0f}x | max abs dz "
        f"{first['max_abs_dz_vs_first_level_model']:.2g} | "
        f"{first['ours_peak_rss_mb']:.0f} / "
        f"{first['first_level_model_peak_rss_mb']:.0f} MB |",
        f"| end to end, one subject, one {size['resolution']:g} mm run ({grid} x "
        f"{e2e['volumes']}, {e2e['brain_voxels']:,} brain voxels, BOLD "
        f"{e2e['bold_gz_mb']:.0f} MB .nii.gz), wall (best of "
        f"{size['end_to_end_repeat']}) | {_seconds(e2e['ours_wall_s'])} | "
        f"{_seconds(e2e['nilearn_wall_s'])} | {e2e['speedup_wall']:.1f}x | "
        f"max abs dz {e2e['max_abs_dz']:.2g} ({e2e['share_dz_over_1e-3']:.1e} of "
        f"voxels above 1e-3) | {e2e['ours_peak_rss_mb']:.0f} / "
        f"{e2e['nilearn_peak_rss_mb']:.0f} MB |",
        f"| the same, CPU time (user + system) | {_seconds(e2e['ours_cpu_s'])} | "
        f"{_seconds(e2e['nilearn_cpu_s'])} | {e2e['speedup_cpu']:.1f}x | | |",
        f"| group sign-flip max-T, {perm['subjects']} subjects x "
        f"{perm['voxels']:,} voxels x {perm['n_perm']:,} permutations (nilearn "
        f"`permuted_ols`, n_jobs=1, run with {perm['nilearn_perm_run']} and "
        "extrapolated) | "
        f"{_seconds(perm['ours_seconds'])} | "
        f"{_seconds(perm['nilearn_seconds_extrapolated'])} | "
        f"{perm['speedup']:.0f}x | FWE abs t cutoff {perm['ours_t_cutoff']:.3f} vs "
        f"{perm['nilearn_t_cutoff']:.3f} (nilearn 95% interval "
        f"{perm['nilearn_t_cutoff_ci95'][0]:.3f}-{perm['nilearn_t_cutoff_ci95'][1]:.3f})"
        f" | {perm['ours_peak_rss_mb']:.0f} / {perm['nilearn_peak_rss_mb']:.0f} MB |",
        f"| group TFCE FWE (E 0.5, H 2, dh max/100, 6-connectivity, with max abs t), "
        f"{spatial['subjects']} subjects x {spatial['voxels']:,} voxels "
        f"({spatial['resolution_mm']} mm MNI152 mask) x {spatial['n_perm']:,} "
        "permutations (nilearn `non_parametric_inference(tfce=True)`, n_jobs=1, "
        f"run with {spatial['nilearn_tfce_perm_run']} and extrapolated at "
        f"{_seconds(spatial['nilearn_tfce_seconds_per_perm'])} a permutation) | "
        f"{_seconds(spatial['ours_tfce_seconds'])} | "
        f"{_seconds(spatial['nilearn_tfce_seconds_extrapolated'])} | "
        f"{spatial['tfce_speedup']:.0f}x (CPU time {spatial['tfce_speedup_cpu']:.0f}x)"
        " | observed TFCE map max rel. diff "
        f"{spatial['tfce_map_max_rel_diff']:.1g}; critical max TFCE "
        f"{spatial['ours_tfce_cutoff']:.0f} | "
        f"{spatial['ours_tfce_peak_rss_mb']:.0f} / "
        f"{spatial['nilearn_tfce_peak_rss_mb']:.0f} MB |",
        f"| group cluster-extent FWE (p < 0.001, t > "
        f"{spatial['cluster_forming_t']:.2f}, with max abs t), the same data "
        f"(nilearn `non_parametric_inference(threshold=0.001)`, run with "
        f"{spatial['nilearn_cluster_perm_run']} and extrapolated) | "
        f"{_seconds(spatial['ours_cluster_seconds'])} | "
        f"{_seconds(spatial['nilearn_cluster_seconds_extrapolated'])} | "
        f"{spatial['cluster_speedup']:.0f}x (CPU time "
        f"{spatial['cluster_speedup_cpu']:.0f}x) | observed cluster sizes differ at "
        f"{spatial['cluster_size_voxels_differing']} voxels; critical max cluster "
        f"{spatial['ours_cluster_cutoff']} voxels | "
        f"{spatial['ours_cluster_peak_rss_mb']:.0f} / "
        f"{spatial['nilearn_cluster_peak_rss_mb']:.0f} MB |",
        "",
        f"Permutations on one core: ours {_seconds(perm['ours_one_core_seconds'])}, "
        f"{perm['speedup_one_core']:.0f}x nilearn's single-job time.",
        "",
        "## End to end against the I/O floor",
        "",
        "The floor is a fresh process that only reads the inputs (BOLD, mask, events,"
        " confounds; the BOLD with our read path, `files.load_masked_series`: every"
        " byte decompressed, the brain voxels kept) and writes the outputs (24 maps"
        " `.nii.gz` on the brain mask with `files.save_image`, the mask, 25 JSON"
        " sidecars, a PNG): start-up, decompression and compression, nothing else.",
        "",
        "| | wall | CPU | peak RSS |",
        "|---|---:|---:|---:|",
        f"| I/O floor | {_seconds(e2e['floor_wall_s'])} | "
        f"{_seconds(e2e['floor_cpu_s'])} | {e2e['floor_peak_rss_mb']:.0f} MB |",
        f"| `laion-fmri-glm glm BIDS OUT participant` (default options) | "
        f"{_seconds(e2e['ours_wall_s'])} | {_seconds(e2e['ours_cpu_s'])} | "
        f"{e2e['ours_peak_rss_mb']:.0f} MB |",
        f"| nilearn + nibabel | {_seconds(e2e['nilearn_wall_s'])} | "
        f"{_seconds(e2e['nilearn_cpu_s'])} | {e2e['nilearn_peak_rss_mb']:.0f} MB |",
        f"| ours / floor | {e2e['ours_over_floor_wall']:.2f} | "
        f"{e2e['ours_over_floor_cpu']:.2f} | |",
        "",
        f"Peak memory of the whole participant command: "
        f"{e2e['ours_peak_rss_mb']:.0f} MB, imports included, "
        f"{e2e['ours_peak_over_masked']:.1f}x the run's masked float32 array "
        f"({e2e['masked_float32_mb']:.0f} MB) and "
        f"{e2e['ours_peak_over_full_4d']:.2f}x its full 4D float32 array "
        f"({e2e['full_4d_float32_mb']:.0f} MB): the BOLD is decompressed volume by "
        "volume and masked on the way, so the 4D array is never in memory.",
        "",
        "## gzip readers and writers",
        "",
        "Reading the BOLD run into one array, and writing 24 maps at level 1 "
        "(best of 3, in one process; `files` uses the ones marked chosen: "
        "`load_image` is zlib-ng on a background thread reading into the "
        "array; the first level reads the same stream volume by volume with "
        "`load_masked_series`).  Reads of a 1.3 GB array vary by tens of percent "
        "between repetitions on a shared machine (page faults, other jobs); the "
        "threaded readers and rapidgzip are close, the single-threaded ones and "
        "nibabel's are slower.  Each writer gives the same bytes twice in one "
        "process (checked), but `save_image` keeps the standard library's zlib: "
        "ISA-L's level-1 stream was seen to vary between worker processes and "
        "zlib-ng's output depends on the CPU's features, and outputs must be "
        "byte-identical on every machine of a cluster.",
        "",
        "| task | option | wall | CPU (all threads) | bytes per map |",
        "|---|---|---:|---:|---:|",
    ]
    for row in results["gzip"]:
        size_text = f"{row['bytes_per_map']:,}" if "bytes_per_map" in row else ""
        lines.append(
            f"| {row['task']} | {row['option']} | {_seconds(row['wall_s'])} | "
            f"{_seconds(row['cpu_s'])} | {size_text} |"
        )
    lines += [
        "",
        "## Scaling (ours)",
        "",
        "![scaling](scaling.png)",
        "",
        "Ours only, best of 2 each.  With 10 subjects the sign flips are "
        "enumerated (2^10 = 1,024 < the permutations asked), hence the drop.",
        "",
        "| what grows | size | seconds |",
        "|---|---:|---:|",
    ]
    for row in results["scaling"]:
        label = SCALING_LABELS[row["axis"]].format(**size)
        lines.append(f"| {label} | {row['x']:,} | {row['seconds']:.2f} |")
    lines += [
        "",
        "Raw rows: `python benchmarks/run.py --json FILE`.  Agreement is also "
        "checked by the test suite (tests/test_first_level.py, tests/test_engine.py,"
        " tests/test_inference.py, tests/test_tfce.py, tests/test_cluster_inference"
        ".py), without timing.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmarks, print and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced sizes")
    parser.add_argument("--output", type=Path, default=BENCH_DIR / "RESULTS.md")
    parser.add_argument("--plot", type=Path, default=BENCH_DIR / "scaling.png")
    parser.add_argument("--json", type=Path, help="also write every row here")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    results = run_all(SIZES["quick" if args.quick else "full"], log)
    results["argv"] = sys.argv[1:] if argv is None else argv
    results["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    plot_scaling(results, args.plot)
    text = markdown(results)
    args.output.write_text(text, encoding="utf-8")
    print(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


if __name__ == "__main__":
    main()
