"""The ``laion-fmri-glm`` argument parser."""

from __future__ import annotations

import argparse

from laion_fmri_dataloader._version import __version__
from laion_fmri_dataloader.cli import commands as handlers
from laion_fmri_dataloader.layout import CORRECTIONS

__all__ = ["build_parser"]


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _add_glm_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bids_dir", help="BIDS dataset root (with events files)")
    parser.add_argument(
        "output_dir",
        help="where the GLM derivatives go, usually BIDS_DIR/derivatives/glm",
    )
    parser.add_argument("analysis_level", choices=["participant", "group", "roi"])
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
        "--res",
        default=None,
        metavar="LABEL",
        help="res entity of the BOLD files, where fMRIPrep wrote several resolutions",
    )
    parser.add_argument(
        "--den",
        default=None,
        metavar="LABEL",
        help="den entity of the BOLD files, where fMRIPrep wrote several densities",
    )
    parser.add_argument(
        "--bold-filter",
        action="append",
        default=[],
        metavar="ENTITY=LABEL",
        help="another entity that chooses between variants of a run, e.g. echo=2 "
        "or cohort=1 (repeatable)",
    )
    parser.add_argument(
        "--repetition-time",
        type=float,
        default=None,
        metavar="SECONDS",
        help="TR of every run, instead of the sidecars' and headers'",
    )
    parser.add_argument(
        "--slice-time-ref",
        type=float,
        default=None,
        metavar="FRACTION",
        help="fraction of the TR at which volumes are sampled (nilearn's "
        "slice_time_ref), instead of fMRIPrep's StartTime / TR (0 without it)",
    )
    parser.add_argument(
        "--dummy-scans",
        type=int,
        default=None,
        metavar="N",
        help="drop the first N volumes of every run, instead of those fMRIPrep's "
        "non_steady_state_outlier columns flag",
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
        help="confound columns or glob patterns such as 'a_comp_cor_0[0-5]' "
        "(default the nine of the model: trans_x..rot_z, global_signal, csf, "
        "white_matter)",
    )
    parser.add_argument(
        "--smoothing-fwhm",
        type=float,
        default=None,
        metavar="MM",
        help="Gaussian smoothing of the BOLD series, mm (participant level)",
    )
    parser.add_argument(
        "--run-combination",
        choices=["mean", "precision"],
        default="mean",
        help="how a subject's runs combine (participant level): 'mean' (default) "
        "weighs them equally, as nilearn's FirstLevelModel; 'precision' by "
        "inverse variance (FSL-style fixed effects)",
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
        "--corrections",
        nargs="+",
        default=list(CORRECTIONS),
        metavar="NAME",
        help="corrected maps to write, of "
        f"{', '.join(CORRECTIONS)} (default: all); tfce and cluster come from the "
        "sign flips of fwe, in one pass",
    )
    group.add_argument(
        "--cluster-threshold",
        type=float,
        default=0.001,
        metavar="P",
        help="cluster-forming threshold of cluster extent, an uncorrected p "
        "turned into |t| with the group's degrees of freedom (default 0.001)",
    )
    group.add_argument(
        "--tfce-e", type=float, default=0.5, help="TFCE extent exponent E (0.5)"
    )
    group.add_argument(
        "--tfce-h", type=float, default=2.0, help="TFCE height exponent H (2)"
    )
    group.add_argument(
        "--tfce-dh",
        default="auto",
        help="TFCE threshold step: auto (max |t| / 100 of each map, as nilearn "
        "and fslmaths) or a number",
    )
    group.add_argument(
        "--group-smoothing-fwhm",
        type=float,
        default=None,
        metavar="MM",
        help="Gaussian smoothing of the subjects' effect maps before the group "
        "test, mm (on top of any --smoothing-fwhm of the participant level)",
    )
    group.add_argument(
        "--no-reports",
        dest="reports",
        action="store_false",
        help="do not write the HTML reports (OUTPUT_DIR/reports) after the group level",
    )
    roi = parser.add_argument_group(
        "roi level (group-constrained subject-specific fROIs)"
    )
    roi.add_argument(
        "--roi-contrast",
        action="append",
        default=[],
        metavar="NAME=CONTRAST",
        help="defining contrast of a category (repeatable; adds or replaces): "
        "default face=faceVsObject, scene=sceneVsObject, object=objectVsBaseline; "
        "NAME=-CONTRAST selects z < 0",
    )
    roi.add_argument(
        "--roi-size",
        default="10%",
        metavar="SIZE",
        help="a subject's fROI in a parcel: top PERCENT%% of its voxels by z "
        "(default 10%%), a voxel COUNT, or z>THRESHOLD",
    )
    roi.add_argument(
        "--parcel-p-threshold",
        type=float,
        default=0.001,
        metavar="P",
        help="one-sided voxel threshold of each subject's map (default 0.001)",
    )
    roi.add_argument(
        "--parcel-fwhm",
        type=float,
        default=8.0,
        metavar="MM",
        help="smoothing of the subjects' overlap map, mm (default 8)",
    )
    roi.add_argument(
        "--parcel-min-overlap",
        type=float,
        default=0.1,
        metavar="SHARE",
        help="smallest smoothed overlap in a parcel, share of subjects (default 0.1)",
    )
    roi.add_argument(
        "--parcel-min-subjects",
        type=float,
        default=0.6,
        metavar="SHARE",
        help="share of subjects with supra-threshold voxels a parcel needs "
        "(default 0.6)",
    )
    roi.add_argument(
        "--parcel-min-voxels",
        type=int,
        default=0,
        metavar="N",
        help="smallest parcel kept, voxels (default 0)",
    )
    roi.add_argument(
        "--parcels",
        default=None,
        metavar="FILE",
        help="given parcels (integer labels on the maps' grid) instead of GSS ones",
    )
    roi.add_argument(
        "--parcel-labels",
        default=None,
        metavar="FILE.tsv",
        help="their labels: columns index, name [, hemi, category]",
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
    info.set_defaults(handler=handlers.info)

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
    simulate.set_defaults(handler=handlers.simulate)

    glm = commands.add_parser(
        "glm", help="fit the GLM (BIDS-App: participant or group)"
    )
    _add_glm_arguments(glm)
    glm.set_defaults(handler=handlers.glm)

    demo = commands.add_parser(
        "demo", help="simulate, fit participant and group levels, write reports"
    )
    demo.add_argument("directory", nargs="?", default="laion-fmri-data")
    demo.add_argument("--workers", type=int, default=None)
    demo.set_defaults(handler=handlers.demo)
    return parser
