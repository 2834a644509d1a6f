"""fROIs against the simulator's truth, side by side with funROI, and on null data.

Usage::

    python benchmarks/bench_froi.py truth DATA_DIR [--funroi-python PYTHON]
    python benchmarks/bench_froi.py null WORK_DIR --datasets 8

``truth``: DATA_DIR is a simulated dataset whose participant and group levels
have run (``laion-fmri-glm demo DATA_DIR`` makes one); the roi level is run
with its defaults and scored on the truth: for the true face (FFA), scene
(PPA) and object (LO) regions of every subject and hemisphere, the share of
fROI voxels inside the true region, the distance of the fROI's peak to the true
centre, the held-out response differences against the true ones, and the
split-half Dice.  When funROI is importable by ``--funroi-python`` (default:
this interpreter), the same subjects' maps are handed to funROI in its own
layout and its parcels and fROIs made with the same parameters as far as its
options go (p < 0.001 uncorrected, 8 mm smoothing, voxel overlap 0.1, 60 % of
subjects, top 10 %), and scored the same way.  funROI 1.1.0 pins
``nilearn==0.14.0rc0``, so it may live in an environment of its own.

``null``: simulates null datasets (``simulate --null``, the demo's eight
subjects at 4 mm, seeds 1..N), fits their first level and counts the datasets
in which any parcel of the three default defining contrasts survives.

Prints Markdown tables and writes a JSON record next to them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import stats

from laion_fmri_dataloader import layout
from laion_fmri_dataloader.dataset import LAIONfMRIDataset
from laion_fmri_dataloader.pipeline.roi import RoiConfig, run_roi
from laion_fmri_dataloader.rois import DEFAULT_ROI_CONTRASTS, name_parcels
from laion_fmri_dataloader.stats.froi import make_parcels, voxel_coordinates

#: The simulated region each category's canonical fROI should find.
TRUE_REGION = {"FFA": "face", "PPA": "scene", "LO": "object"}
#: Response differences of the simulator (fraction of its effect size): the
#: preferred category minus each other one.
CONDITIONS = ("face", "scene", "object")


def _truth(data_dir: Path) -> dict:
    return json.loads((data_dir / "derivatives/truth/simulation.json").read_text())


def true_region_masks(data_dir: Path, subject: str, shape, affine) -> dict:
    """``(region, hemi) -> (mask, centre)``: the support of each true region."""
    coords = voxel_coordinates(shape, affine)
    regions = {}
    for region in _truth(data_dir)["subjects"][subject]["regions"]:
        centre = np.asarray(region["centre_mm"])
        reach = region["core_radius_mm"] + region["taper_mm"]
        inside = np.linalg.norm(coords - centre, axis=-1) <= reach
        regions[(region["region"], region["hemisphere"])] = (inside, centre)
    return regions


def _true_effects(data_dir: Path, subject: str, task: str = "experiment") -> dict:
    folder = data_dir / "derivatives/truth" / subject
    return {
        condition: np.asarray(
            nib.load(
                folder
                / f"{subject}_task-{task}_condition-{condition}_truth-effect.nii.gz"
            ).dataobj
        )
        for condition in CONDITIONS
    }


def score(masks: dict, peaks: dict, data_dir: Path, shape, affine) -> list[dict]:
    """Scores of fROIs ``{(subject, roi, hemi): mask}`` on the truth."""
    rows = []
    for (subject, roi, hemi), froi in masks.items():
        truth = true_region_masks(data_dir, subject, shape, affine)
        key = (roi, hemi)
        if key not in truth or not froi.any():
            continue
        inside, centre = truth[key]
        rows.append(
            {
                "subject": subject,
                "roi": roi,
                "hemi": hemi,
                "inside": float((froi & inside).sum() / froi.sum()),
                "peak_distance_mm": float(
                    np.linalg.norm(peaks[(subject, roi, hemi)] - centre)
                ),
                "n_voxels": int(froi.sum()),
            }
        )
    return rows


def _summary(rows: list[dict]) -> dict:
    out = {}
    for roi in TRUE_REGION:
        chosen = [r for r in rows if r["roi"] == roi]
        if chosen:
            out[roi] = {
                "n": len(chosen),
                "inside_mean": float(np.mean([r["inside"] for r in chosen])),
                "inside_min": float(np.min([r["inside"] for r in chosen])),
                "peak_mm_median": float(
                    np.median([r["peak_distance_mm"] for r in chosen])
                ),
                "peak_mm_max": float(np.max([r["peak_distance_mm"] for r in chosen])),
            }
    return out


def ours(data_dir: Path) -> dict:
    """Run the roi level, score its fROIs and profiles on the truth."""
    glm = data_dir / "derivatives/glm"
    start = time.perf_counter()
    run_roi(RoiConfig(output_dir=glm))
    seconds = time.perf_counter() - start
    dataset = LAIONfMRIDataset(data_dir)
    mask_image = nib.load(glm / layout.group_mask())
    shape, affine = mask_image.shape, mask_image.affine
    masks, peaks = {}, {}
    for subject in dataset.subjects:
        for roi, hemi in dataset.rois(subject):
            if roi not in TRUE_REGION:
                continue
            froi = np.asarray(dataset.load_roi(subject, roi, hemi).dataobj) > 0
            sidecar = json.loads(
                (
                    glm
                    / layout.sidecar_of(
                        layout.roi_mask(subject, "experiment", roi, hemi)
                    )
                ).read_text()
            )
            masks[(subject, roi, hemi)] = froi
            peaks[(subject, roi, hemi)] = np.asarray(sidecar["PeakMNI"])
    rows = score(masks, peaks, data_dir, shape, affine)
    # held-out responses against the true mean effects in the same fROIs
    responses = dataset.load_roi_responses()
    profile = []
    for (subject, roi, hemi), _ in masks.items():
        preferred = TRUE_REGION[roi]
        truth = _true_effects(data_dir, subject)
        halves = [
            np.asarray(dataset.load_roi(subject, roi, hemi, split=s).dataobj) > 0
            for s in layout.SPLITS
        ]
        rows_here = responses[
            (responses.subject == subject)
            & (responses.roi == roi)
            & (responses.hemi == hemi)
        ].set_index("condition")["psc"]
        for other in CONDITIONS:
            if other == preferred:
                continue
            true_diff = np.mean(
                [truth[preferred][h].mean() - truth[other][h].mean() for h in halves]
            )
            profile.append(
                {
                    "roi": roi,
                    "difference": f"{preferred}-{other}",
                    "measured": float(rows_here[preferred] - rows_here[other]),
                    "true": float(true_diff),
                }
            )
    dice = responses.drop_duplicates(["subject", "roi", "hemi"])
    dice = {roi: float(dice[dice.roi == roi]["dice"].mean()) for roi in TRUE_REGION}
    return {
        "seconds": seconds,
        "scores": _summary(rows),
        "profile": _profile_summary(profile),
        "dice": dice,
    }


def _profile_summary(profile: list[dict]) -> dict:
    out = {}
    for key in sorted({(p["roi"], p["difference"]) for p in profile}):
        chosen = [p for p in profile if (p["roi"], p["difference"]) == key]
        out[f"{key[0]} {key[1]}"] = {
            "measured": float(np.mean([p["measured"] for p in chosen])),
            "true": float(np.mean([p["true"] for p in chosen])),
            "n": len(chosen),
        }
    return out


_FUNROI_DRIVER = r"""
import json, sys, time
import numpy as np, nibabel as nib
from funROI import set_bids_deriv_folder, set_analysis_output_folder
from funROI.analysis import ParcelsGenerator, FROIGenerator
from funROI import FROIConfig
args = json.loads(sys.argv[1])
set_bids_deriv_folder(args["deriv"])
set_analysis_output_folder(args["analysis"])
out = {}
start = time.perf_counter()
for category, contrast in args["contrasts"].items():
    generator = ParcelsGenerator(
        parcels_name=category, smoothing_kernel_size=args["fwhm"],
        overlap_thr_vox=args["min_overlap"], min_voxel_size=0,
        overlap_thr_roi=args["min_subjects"], use_spm_smooth=True,
    )
    generator.add_subjects(
        subjects=args["subjects"], task="experiment", contrasts=[contrast],
        p_threshold_type="none", p_threshold_value=args["p"],
    )
    parcels = generator.run()
    path = f"{args['analysis']}/parcels_{category}.nii.gz"
    nib.save(parcels, path)
    config = FROIConfig(
        task="experiment", contrasts=[contrast], threshold_type="percent",
        threshold_value=args["fraction"], parcels=path,
    )
    frois = FROIGenerator(args["subjects"], config, run_label="all").run(save=False)
    for subject, image in frois:
        target = f"{args['analysis']}/froi_{category}_sub-{subject}.nii.gz"
        data = np.asarray(image.get_fdata(), np.int16)
        nib.save(nib.Nifti1Image(data, image.affine), target)
    out[category] = path
out["seconds"] = time.perf_counter() - start
print(json.dumps(out))
"""


def _write_funroi_layout(data_dir: Path, deriv: Path, contrasts, subjects) -> None:
    """Our z maps as funROI's per-run p maps: run-1 (odd), run-2 (even), all."""
    glm = data_dir / "derivatives/glm"
    for label in subjects:
        folder = deriv / "first_level_experiment" / f"sub-{label}" / "contrasts"
        folder.mkdir(parents=True, exist_ok=True)
        for contrast in contrasts:
            sources = {
                "all": layout.first_level_map(label, "experiment", contrast, "z"),
                "1": layout.first_level_map(label, "experiment", contrast, "z", "odd"),
                "2": layout.first_level_map(label, "experiment", contrast, "z", "even"),
            }
            for run, relative in sources.items():
                image = nib.load(glm / relative)
                z = np.asarray(image.dataobj, dtype=np.float64)
                inside = z != 0
                p = np.where(inside, stats.norm.sf(z), np.nan)
                nib.save(
                    nib.Nifti1Image(p.astype(np.float32), image.affine),
                    folder / f"sub-{label}_task-experiment_run-{run}"
                    f"_contrast-{contrast}_p.nii.gz",
                )


def funroi(data_dir: Path, python: str) -> dict | str:
    """funROI's parcels and fROIs on the same maps, scored like ours."""
    check = subprocess.run(
        [
            python,
            "-c",
            "import funROI",
        ],
        capture_output=True,
        text=True,
    )
    if check.returncode != 0:
        reason = check.stderr.strip().splitlines()[-1]
        return f"funROI is not importable by {python}: {reason}"
    glm = data_dir / "derivatives/glm"
    dataset = LAIONfMRIDataset(data_dir)
    subjects = [s.removeprefix("sub-") for s in dataset.subjects]
    contrasts = {c.category: c.contrast for c in DEFAULT_ROI_CONTRASTS.values()}
    work = Path(tempfile.mkdtemp(prefix="funroi-"))
    try:
        _write_funroi_layout(data_dir, work / "deriv", contrasts.values(), subjects)
        arguments = {
            "deriv": str(work / "deriv"),
            "analysis": str(work / "analysis"),
            "subjects": subjects,
            "contrasts": contrasts,
            "fwhm": 8.0,
            "min_overlap": 0.1,
            "min_subjects": 0.6,
            "p": 0.001,
            "fraction": 0.1,
        }
        (work / "analysis").mkdir()
        run = subprocess.run(
            [python, "-c", _FUNROI_DRIVER, json.dumps(arguments)],
            capture_output=True,
            text=True,
        )
        if run.returncode != 0:
            return "funROI failed: " + run.stderr.strip().splitlines()[-1]
        result = json.loads(run.stdout.strip().splitlines()[-1])
        mask_image = nib.load(glm / layout.group_mask())
        shape, affine = mask_image.shape, mask_image.affine
        coords = voxel_coordinates(shape, affine)
        masks, peaks = {}, {}
        for category, contrast in contrasts.items():
            parcels = np.asarray(nib.load(result[category]).dataobj).astype(int)
            labels = [int(v) for v in np.unique(parcels) if v > 0]
            centres, hemis = [], []
            for value in labels:
                region = parcels == value
                centre = coords[region].mean(axis=0)
                centres.append(tuple(centre))
                hemis.append("L" if centre[0] < 0 else "R")
            names = name_parcels(category, centres, hemis)
            for subject in subjects:
                froi = np.asarray(
                    nib.load(
                        work / "analysis" / f"froi_{category}_sub-{subject}.nii.gz"
                    ).dataobj
                ).astype(int)
                z = np.asarray(
                    nib.load(
                        glm
                        / layout.first_level_map(subject, "experiment", contrast, "z")
                    ).dataobj
                )
                for value, (name, _), hemi in zip(labels, names, hemis, strict=True):
                    if name not in TRUE_REGION:
                        continue
                    selected = froi == value
                    if not selected.any():
                        continue
                    peak = np.unravel_index(
                        np.argmax(np.where(selected, z, -np.inf)), shape
                    )
                    masks[(f"sub-{subject}", name, hemi)] = selected
                    peaks[(f"sub-{subject}", name, hemi)] = coords[peak]
        return {
            "seconds": result["seconds"],
            "scores": _summary(score(masks, peaks, data_dir, shape, affine)),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def null(work_dir: Path, n_datasets: int) -> dict:
    """Share of null datasets in which any parcel survives the 60 % rule."""
    from laion_fmri_dataloader.cli import main
    from laion_fmri_dataloader.demo import demo_simulation
    from laion_fmri_dataloader.simulate import simulate_dataset

    records = []
    for seed in range(1, n_datasets + 1):
        root = work_dir / f"null-{seed}"
        options = {**demo_simulation().to_dict(), "null": True, "seed": seed}
        simulate_dataset(root, **options)
        glm = root / "derivatives/glm"
        assert (
            main(["glm", str(root), str(glm), "participant", "--scheduler", "none"])
            == 0
        )
        subjects = sorted(p.name[4:] for p in (glm / "first_level").glob("sub-*"))
        masks = [
            np.asarray(nib.load(glm / layout.first_level_mask(s, "experiment")).dataobj)
            > 0
            for s in subjects
        ]
        affine = nib.load(
            glm / layout.first_level_mask(subjects[0], "experiment")
        ).affine
        group_mask = np.logical_and.reduce(masks)
        found = {}
        for roi_contrast in DEFAULT_ROI_CONTRASTS.values():
            z_maps = np.stack(
                [
                    np.asarray(
                        nib.load(
                            glm
                            / layout.first_level_map(
                                s, "experiment", roi_contrast.contrast, "z"
                            )
                        ).dataobj
                    )
                    for s in subjects
                ]
            )
            result = make_parcels(
                z_maps,
                group_mask,
                affine,
                p_threshold=0.001,
                direction=1,
                smoothing_fwhm=8.0,
                min_overlap=0.1,
                min_subject_fraction=0.6,
                min_voxels=0,
            )
            found[roi_contrast.contrast] = len(result.parcels)
        records.append({"seed": seed, "parcels": found})
        shutil.rmtree(root, ignore_errors=True)
        print(json.dumps(records[-1]), flush=True)
    with_any = sum(any(r["parcels"].values()) for r in records)
    return {"datasets": len(records), "with_any_parcel": with_any, "records": records}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    truth = commands.add_parser("truth")
    truth.add_argument("data_dir", type=Path)
    truth.add_argument("--funroi-python", default=sys.executable)
    nulls = commands.add_parser("null")
    nulls.add_argument("work_dir", type=Path)
    nulls.add_argument("--datasets", type=int, default=8)
    args = parser.parse_args(argv)
    if args.command == "null":
        args.work_dir.mkdir(parents=True, exist_ok=True)
        record = null(args.work_dir, args.datasets)
        print(
            f"null: {record['with_any_parcel']} of {record['datasets']} datasets "
            "have any parcel surviving the 60 % rule"
        )
    else:
        record = {
            "ours": ours(args.data_dir),
            "funroi": funroi(args.data_dir, args.funroi_python),
        }
        _print_truth(record)
    print(json.dumps(record, indent=1, default=str))
    return 0


def _print_truth(record: dict) -> None:
    print(
        "| tool | region | fROIs | inside true region (mean, min) "
        "| peak to true centre, mm (median, max) |"
    )
    print("|---|---|---|---|---|")
    for tool in ("ours", "funroi"):
        result = record[tool]
        if isinstance(result, str):
            print(f"| {tool} | {result} | | | |")
            continue
        for roi, s in result["scores"].items():
            print(
                f"| {tool} | {roi} | {s['n']} "
                f"| {s['inside_mean']:.2f}, {s['inside_min']:.2f} "
                f"| {s['peak_mm_median']:.1f}, {s['peak_mm_max']:.1f} |"
            )
        print(f"| {tool} | run time | | {result['seconds']:.1f} s | |")
    for key, p in record["ours"]["profile"].items():
        print(
            f"{key}: measured {p['measured']:.2f} %, "
            f"true {p['true']:.2f} % (n={p['n']})"
        )
    print(
        "split-half Dice:", {k: round(v, 2) for k, v in record["ours"]["dice"].items()}
    )


if __name__ == "__main__":
    sys.exit(main())
