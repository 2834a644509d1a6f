"""``laion-fmri-glm``: the command line.

Thin on purpose: it parses arguments, calls the modules and turns every known
error (:class:`~laion_fmri_dataloader.errors.LaionFmriError`) into one line on
stderr and exit code 2.  Exit code 1 means a bug.  Heavy modules are imported
inside the commands, so that ``laion-fmri-glm --help`` starts fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from laion_fmri_dataloader._version import __version__
from laion_fmri_dataloader.errors import LaionFmriError

__all__ = ["build_parser", "main"]

log = logging.getLogger("laion_fmri")


def _info(args: argparse.Namespace) -> int:
    from laion_fmri_dataloader.dataset import LAIONfMRIDataset
    from laion_fmri_dataloader.layout import FIRST_LEVEL_STAT_TYPES, GROUP_STAT_TYPES

    dataset = LAIONfMRIDataset(args.data_dir)
    print(f"GLM derivatives in {dataset.root}")
    print(
        f"subjects ({len(dataset.subjects)}): {', '.join(dataset.subjects) or 'none'}"
    )
    print(f"tasks: {', '.join(dataset.tasks()) or 'none'}")
    missing = []
    for subject in dataset.subjects:
        for task in dataset.tasks(subject):
            contrasts = dataset.contrasts(subject, task)
            stats = dataset.stat_types(subject, task)
            print(
                f"  {subject} task-{task}: {len(contrasts)} contrasts "
                f"({', '.join(contrasts)}); stat types: {', '.join(stats)}"
            )
            missing += [
                f"{subject} task-{task} {contrast} stat-{stat}"
                for contrast in contrasts
                for stat in FIRST_LEVEL_STAT_TYPES
                if not dataset.has_map(subject, task, contrast, stat)
            ]
    group_contrasts = dataset.contrasts() if dataset.stat_types() else []
    print(
        f"group level: {len(group_contrasts)} contrasts ({', '.join(group_contrasts)})"
    )
    if group_contrasts:
        print(f"  stat types: {', '.join(dataset.stat_types())}")
        print(f"  corrections: {', '.join(dataset.corrections()) or 'none'}")
    for contrast in group_contrasts:
        missing += [
            f"group {contrast} stat-{stat}"
            for stat in GROUP_STAT_TYPES
            if stat in dataset.stat_types()
            and not dataset.has_map(contrast=contrast, stat_type=stat)
        ]
        for correction in dataset.corrections():
            if correction not in dataset.corrections(contrast):
                missing.append(f"group {contrast} {correction}-corrected")
    if not group_contrasts:
        missing.append("group level (run `laion-fmri-glm glm ... group`)")
    print("missing: " + ("nothing" if not missing else f"{len(missing)}"))
    for item in missing:
        print(f"  {item}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from laion_fmri_dataloader.simulate import simulate_dataset

    options = {
        "subjects": args.subjects,
        "runs": args.runs,
        "resolution": args.resolution,
        "n_volumes": args.n_volumes,
        "tr": args.tr,
        "seed": args.seed,
        "null": args.null,
        "task": args.task,
        "sessions": args.sessions,
        "extra_categories": tuple(args.extra_categories),
    }
    if args.effect_size is not None:
        options["effect_size"] = args.effect_size
    path = simulate_dataset(args.output_dir, **options)
    print(f"simulated dataset written to {path}")
    return 0


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _glm(args: argparse.Namespace) -> int:
    from laion_fmri_dataloader.pipeline.levels import run_glm_command

    return run_glm_command(args)


def _demo(args: argparse.Namespace) -> int:
    from laion_fmri_dataloader.demo import run_demo

    return run_demo(args.directory, workers=args.workers)


def _add_glm_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bids_dir", help="BIDS dataset root (with events files)")
    parser.add_argument(
        "output_dir",
        help="where the GLM derivatives go, usually BIDS_DIR/derivatives/glm",
    )
    parser.add_argument("analysis_level", choices=["participant", "group"])
    parser.add_argument(
        "--participant-label",
        nargs="+",
        default=None,
        metavar="LABEL",
        help="subjects to process (01 or sub-01); default all with the task",
    )
    parser.add_argument(
        "--task", default="experiment", help="task label (default experiment)"
    )
    parser.add_argument(
        "--fmriprep-dir",
        default=None,
        help="fMRIPrep derivatives (default BIDS_DIR/derivatives/fmriprep)",
    )
    parser.add_argument(
        "--space", default="MNI152NLin2009cAsym", help="output space of fMRIPrep"
    )
    parser.add_argument(
        "--desc", default="preproc", help="desc entity of the BOLD files"
    )
    parser.add_argument(
        "--condition",
        action="append",
        default=[],
        metavar="CATEGORY=TYPE[,TYPE]",
        help="map trial types onto a category, e.g. face=adult,child (repeatable)",
    )
    parser.add_argument(
        "--contrast",
        action="append",
        default=[],
        metavar="NAME=EXPRESSION",
        help="extra contrast (repeatable), e.g. "
        "'faceVsAll=face - 0.5*scene - 0.5*object'",
    )
    parser.add_argument(
        "--confounds",
        nargs="+",
        default=None,
        metavar="COLUMN",
        help="confound columns (default the nine of the model: trans_x..rot_z, "
        "global_signal, csf, white_matter)",
    )
    parser.add_argument(
        "--smoothing-fwhm",
        type=float,
        default=None,
        metavar="MM",
        help="Gaussian smoothing, mm: of the BOLD (participant), of effects (group)",
    )
    parser.add_argument(
        "--force", action="store_true", help="redo outputs that are complete"
    )
    group = parser.add_argument_group("group level")
    group.add_argument("--alpha", type=float, default=0.05, help="FDR q and FWE alpha")
    group.add_argument(
        "--n-perm", type=int, default=10000, help="sign-flip permutations"
    )
    group.add_argument(
        "--fwe",
        choices=["auto", "permutation", "bonferroni"],
        default="auto",
        help="FWE method; auto = permutation when it can reach alpha, else Bonferroni",
    )
    group.add_argument("--one-sided", action="store_true", help="test effect > 0 only")
    group.add_argument("--seed", type=int, default=0, help="seed of the permutations")
    group.add_argument(
        "--no-reports",
        dest="reports",
        action="store_false",
        help="do not write the HTML reports (OUTPUT_DIR/reports) after the group level",
    )
    scale = parser.add_argument_group("scheduling")
    scale.add_argument(
        "--scheduler",
        default="auto",
        help="'auto' (default: in this process for one subject or on one CPU, "
        "else 'local'), 'local' (a Dask LocalCluster), 'slurm' (dask-jobqueue), "
        "'none' (in this process) or a scheduler address tcp://HOST:PORT",
    )
    scale.add_argument(
        "--workers", type=int, default=None, help="number of Dask workers"
    )
    scale.add_argument("--memory-per-worker", default=None, help="e.g. 4GiB")
    scale.add_argument("--slurm-queue", default=None)
    scale.add_argument("--slurm-account", default=None)
    scale.add_argument("--slurm-walltime", default=None, help="e.g. 02:00:00")
    scale.add_argument("--slurm-cores", type=int, default=None)


def build_parser() -> argparse.ArgumentParser:
    """The ``laion-fmri-glm`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="laion-fmri-glm",
        description="GLM derivatives of the LAION-fMRI dataset: simulate, fit, load.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="what GLM derivatives a dataset holds")
    info.add_argument("data_dir", help="dataset root (with derivatives/glm) or a URL")
    info.set_defaults(handler=_info)

    simulate = commands.add_parser(
        "simulate", help="write a simulated BIDS + fMRIPrep dataset with known truth"
    )
    simulate.add_argument("output_dir")
    simulate.add_argument("--subjects", type=int, default=4)
    simulate.add_argument("--runs", type=int, default=2, help="runs per session")
    simulate.add_argument(
        "--resolution", type=float, default=4.0, help="voxel size, mm"
    )
    simulate.add_argument("--n-volumes", type=int, default=160, help="volumes per run")
    simulate.add_argument("--tr", type=float, default=1.9, help="repetition time, s")
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument(
        "--effect-size",
        type=float,
        default=None,
        help="peak category-selective effect, percent signal change",
    )
    simulate.add_argument("--null", action="store_true", help="no task effect at all")
    simulate.add_argument("--task", default="experiment")
    simulate.add_argument("--sessions", type=int, default=1)
    simulate.add_argument(
        "--extra-categories",
        type=_comma_list,
        default=[],
        help="comma-separated, e.g. body,character,scrambled",
    )
    simulate.set_defaults(handler=_simulate)

    glm = commands.add_parser(
        "glm", help="fit the GLM (BIDS-App: participant or group)"
    )
    _add_glm_arguments(glm)
    glm.set_defaults(handler=_glm)

    demo = commands.add_parser(
        "demo", help="simulate, fit participant and group levels, write reports"
    )
    demo.add_argument("directory", nargs="?", default="laion-fmri-data")
    demo.add_argument("--workers", type=int, default=None)
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``laion-fmri-glm``; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.handler(args)
    except LaionFmriError as error:
        print(f"laion-fmri-glm: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "laion-fmri-glm: interrupted; rerun the same command to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
