"""First level, one subject: design and AR(1) fit per run, fixed effects, outputs.

For each run of the task (across sessions) the events are mapped onto the
categories, a design matrix is built (:mod:`.design`) and the AR(1) GLM is fit
inside the intersection of the runs' brain masks (:mod:`.engine`).  Runs are
combined with equal weights, as nilearn's ``FirstLevelModel`` combines them
(or by inverse-variance weights, ``run_combination="precision"``), and every
contrast's ``effect`` (percent signal change), ``variance``, ``t`` and ``z``
maps are written with their sidecars, atomically, together with the subject's
mask and design-matrix figure.

Every input is checked before the first fit, so that bad input stops the
subject with one clear :class:`~laion_fmri_dataloader.errors.InputError` and
nothing is written.  A subject's folder is written under its lock, as one
unit with a manifest of checksums (:func:`~laion_fmri_dataloader.io.files.
output_set`); a rerun skips a subject whose manifest is complete, matches
the files and was made from the same inputs with the same parameters.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

import nibabel as nib
import numpy as np
import pandas as pd

from laion_fmri_dataloader import layout, provenance
from laion_fmri_dataloader._system import map_threads
from laion_fmri_dataloader._version import __version__
from laion_fmri_dataloader.contrasts import (
    CONDITIONS,
    STANDARD_CONTRASTS,
    Contrast,
    contrast_vector,
)
from laion_fmri_dataloader.errors import InputError
from laion_fmri_dataloader.inputs.bids import (
    DEFAULT_CONFOUNDS,
    RunInputs,
    find_runs,
    read_bold,
    read_confounds,
    read_mask,
)
from laion_fmri_dataloader.inputs.events import check_trial_type_names, read_events
from laion_fmri_dataloader.inputs.timing import RunTiming, read_timing
from laion_fmri_dataloader.io.files import (
    atomic_output,
    check_input_file,
    folder_lock,
    load_masked_series,
    output_set,
    remove_stale_temporaries,
    save_image,
    write_json,
)
from laion_fmri_dataloader.pipeline.design_figure import plot_designs
from laion_fmri_dataloader.pipeline.halves import (
    HALF_CONTRAST_STAT,
    condition_contrasts,
    half_maps,
)
from laion_fmri_dataloader.provenance import outputs_complete
from laion_fmri_dataloader.sidecar import (
    DatasetDescription,
    Generator,
    MapSidecar,
    ModelInfo,
    container,
    contrast_info,
    dependency_versions,
    input_files,
    software,
)
from laion_fmri_dataloader.stats.design import ModelSettings, make_design
from laion_fmri_dataloader.stats.engine import (
    ContrastResult,
    RunCombination,
    combine_runs,
    fit_ar1_contrasts,
)

__all__ = [
    "FirstLevelConfig",
    "SubjectResult",
    "SubjectStatus",
    "masked_timeseries",
    "run_subject",
    "write_dataset_description",
]

log = logging.getLogger("laion_fmri")


@dataclass(frozen=True)
class FirstLevelConfig:
    """Everything that decides a subject's first-level outputs.

    Attributes
    ----------
    bids_dir, output_dir : Path
        The raw BIDS dataset and the GLM derivative folder.
    task : str
        Task label.
    fmriprep_dir : Path or None
        Defaults to ``bids_dir/derivatives/fmriprep``.
    space, desc : str
        Entities of the preprocessed BOLD series.
    condition_map : mapping of str to tuple of str
        Category -> trial types (``{"face": ("adult", "child")}``).
    extra_contrasts : tuple of Contrast
        User contrasts beside the six standard ones.
    confounds : tuple of str
        Confound columns of the model.
    model : ModelSettings
        HRF, drift, high-pass, smoothing.
    run_combination : {'mean', 'precision'}
        How several runs combine: equal weights, as nilearn's
        ``FirstLevelModel`` (the default), or inverse-variance weights
        (FSL-style fixed effects).
    force : bool
        Redo subjects whose outputs are complete.
    source_dataset : str or None
        How ``dataset_description.json`` names the raw dataset
        (``SourceDatasets``): None for ``bids_dir`` relative to
        ``output_dir``, a URL, or ``""`` for none (a remote ``output_dir``
        cannot point at a local folder).
    selection : mapping of str to str
        Entities that choose between variants of a run (``--res``, ``--den``,
        ``--bold-filter``), e.g. ``{"res": "2"}``.
    repetition_time : float or None
        Seconds; overrides the sidecars and headers (``--repetition-time``).
    slice_time_ref : float or None
        Fraction of the TR; overrides ``StartTime`` (``--slice-time-ref``).
    dummy_scans : int or None
        Volumes dropped at the start of every run instead of those fMRIPrep
        flags as non-steady-state (``--dummy-scans``).
    """

    bids_dir: Path
    output_dir: Path
    task: str = "experiment"
    fmriprep_dir: Path | None = None
    space: str = "MNI152NLin2009cAsym"
    desc: str = "preproc"
    condition_map: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    extra_contrasts: tuple[Contrast, ...] = ()
    confounds: tuple[str, ...] = DEFAULT_CONFOUNDS
    model: ModelSettings = field(default_factory=ModelSettings)
    run_combination: RunCombination = "mean"
    force: bool = False
    source_dataset: str | None = None
    selection: Mapping[str, str] = field(default_factory=dict)
    repetition_time: float | None = None
    slice_time_ref: float | None = None
    dummy_scans: int | None = None

    @property
    def fmriprep(self) -> Path:
        """The fMRIPrep folder in use."""
        if self.fmriprep_dir is not None:
            return Path(self.fmriprep_dir)
        return Path(self.bids_dir) / "derivatives" / "fmriprep"

    @property
    def contrasts(self) -> dict[str, Contrast]:
        """Standard and user contrasts, by name."""
        return {**STANDARD_CONTRASTS, **{c.name: c for c in self.extra_contrasts}}

    def parameters(self) -> dict[str, object]:
        """The parameters that decide the outputs, as JSON-ready values."""
        return {
            "Task": self.task,
            "Space": self.space,
            "Desc": self.desc,
            "ConditionMap": {k: list(v) for k, v in sorted(self.condition_map.items())},
            "Contrasts": {
                name: contrast.weights for name, contrast in self.contrasts.items()
            },
            "Confounds": list(self.confounds),
            "Model": asdict(self.model),
            "RunCombination": self.run_combination,
            "Selection": dict(sorted(self.selection.items())),
            "RepetitionTimeOverride": self.repetition_time,
            "SliceTimeRefOverride": self.slice_time_ref,
            "DummyScans": self.dummy_scans,
            "Version": __version__,
        }


#: What happened to a subject at the participant level.
SubjectStatus = Literal["done", "skipped", "failed", "error"]


@dataclass
class SubjectResult:
    """What happened to one subject.

    ``status`` is ``"done"``, ``"skipped"`` (outputs complete), ``"failed"``
    (bad input; ``message`` says why) or ``"error"`` (a bug).  ``log_records``
    holds the subject's log lines (level, message) when it ran on a Dask
    worker, for the client to log.
    """

    subject: str
    status: SubjectStatus
    n_runs: int = 0
    message: str = ""
    warnings: list[str] = field(default_factory=list)
    log_records: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class _PreparedRun:
    inputs: RunInputs
    design: pd.DataFrame
    n_volumes: int
    timing: RunTiming
    dropped: tuple[int, ...]
    warnings: list[str]

    @property
    def repetition_time(self) -> float:
        return self.timing.repetition_time

    @property
    def kept(self) -> np.ndarray:
        """Volumes fitted: all but the non-steady-state or dummy ones."""
        return np.setdiff1d(np.arange(self.n_volumes), self.dropped)


@dataclass
class _Designs:
    """The checked runs of a subject and what their events hold."""

    runs: list[_PreparedRun]
    conditions: list[str]
    extras: list[str]
    implicit_baseline: bool


@dataclass
class _SubjectFit:
    """Everything that is written for a subject."""

    designs: _Designs
    combined: dict[str, ContrastResult]
    fit_mask: np.ndarray
    final_mask: np.ndarray
    reference: nib.Nifti1Image
    fingerprint: str
    warnings: list[str]
    halves: list = field(default_factory=list)


def masked_timeseries(bold: nib.Nifti1Image, mask: np.ndarray) -> np.ndarray:
    """Voxel time series inside ``mask`` as a float32 (n_volumes, n_voxels) array."""
    data = np.asanyarray(bold.dataobj)
    # NIfTI data are Fortran-ordered: (voxels, time) is a view whose transpose is
    # C-contiguous, so gathering voxel columns reads whole rows of memory.  The
    # voxels come out in C order of the mask, as ``volume[mask]`` expects.
    by_time = data.reshape(mask.size, data.shape[3], order="F").T
    columns = np.ravel_multi_index(np.nonzero(mask), mask.shape, order="F")
    return np.asarray(by_time[:, columns], dtype=np.float32)


def _expected_maps(config: FirstLevelConfig, subject: str, n_runs: int) -> list:
    maps = [
        layout.first_level_map(subject, config.task, name, stat)
        for name in config.contrasts
        for stat in layout.FIRST_LEVEL_STAT_TYPES
    ]
    if n_runs >= 2:
        maps += [
            layout.first_level_map(subject, config.task, name, HALF_CONTRAST_STAT, half)
            for name in config.contrasts
            for half in layout.SPLITS
        ]
    return maps


def _subject_outputs(config: FirstLevelConfig, subject: str, n_runs: int) -> list[str]:
    """File names of the outputs every first level of the task writes.

    Half-run maps of conditions come on top (their names depend on the
    events); the manifest lists every file actually written.
    """
    images = [
        *_expected_maps(config, subject, n_runs),
        layout.first_level_mask(subject, config.task),
    ]
    paths = [
        *images,
        *map(layout.sidecar_of, images),
        layout.design_matrix_png(subject, config.task),
    ]
    return [path.name for path in paths]


def _is_complete(
    config: FirstLevelConfig, subject: str, expected: str, n_runs: int
) -> bool:
    return outputs_complete(
        Path(config.output_dir) / layout.first_level_dir(subject),
        layout.first_level_manifest(subject, config.task).name,
        _subject_outputs(config, subject, n_runs),
        expected,
    )


def _check_conditions(
    config: FirstLevelConfig, runs: Sequence[RunInputs], events: Sequence[pd.DataFrame]
) -> tuple[list[str], list[str], bool]:
    """Task conditions, extra trial types, and whether the baseline is implicit."""
    present = [set(table["trial_type"]) for table in events]
    all_types = set().union(*present)
    categories = [c for c in CONDITIONS if c in all_types]
    extras = sorted(all_types - set(CONDITIONS))
    if not set(categories) - {"baseline"}:
        raise InputError(
            f"events files such as {runs[0].events} have trial types "
            f"{', '.join(sorted(all_types))}, none of which is face, scene or object; "
            "map them with e.g. --condition face=adult,child"
        )
    implicit_baseline = "baseline" not in all_types
    for run, types in zip(runs, present, strict=True):
        for contrast in config.contrasts.values():
            for condition in contrast.conditions:
                if implicit_baseline and condition == "baseline":
                    continue
                if condition not in types:
                    raise InputError(
                        f"events file {run.events} has no '{condition}' events, which "
                        f"contrast {contrast.name} needs; add them, map a trial type "
                        f"onto it with --condition {condition}=TYPE, or drop the run"
                    )
    return categories, extras, implicit_baseline


def _dropped_volumes(
    config: FirstLevelConfig, run: RunInputs, flagged: tuple[int, ...], n_volumes: int
) -> tuple[int, ...]:
    """Volumes left out of the fit: ``--dummy-scans`` or fMRIPrep's flags."""
    dropped = flagged if config.dummy_scans is None else range(config.dummy_scans)
    dropped = tuple(dropped)
    if n_volumes - len(dropped) < 2:
        raise InputError(
            f"{run.bold}: {len(dropped)} of its {n_volumes} volumes are "
            "non-steady-state or dummy scans; fewer than two are left to fit"
        )
    return dropped


def _prepare(config: FirstLevelConfig, runs: Sequence[RunInputs]) -> _Designs:
    """Read and check every run's events, confounds and header; build designs."""
    all_events = [read_events(run.events, config.condition_map) for run in runs]
    events = [item.table for item in all_events]
    conditions, extras, implicit_baseline = _check_conditions(config, runs, events)
    prepared = []
    for run, item in zip(runs, all_events, strict=True):
        table = item.table
        header_only = nib.load(run.bold) if run.bold.is_file() else None
        if header_only is None:
            raise InputError(f"BOLD series {run.bold} does not exist")
        if len(header_only.shape) != 4 or header_only.shape[3] < 2:
            raise InputError(
                f"BOLD series {run.bold} has shape {header_only.shape}; a 4D series "
                "with at least two volumes is needed"
            )
        n_volumes = header_only.shape[3]
        timing = read_timing(
            run.sidecars,
            header_only,
            run.bold,
            repetition_time=config.repetition_time,
            slice_time_ref=config.slice_time_ref,
        )
        repetition_time = timing.repetition_time
        confounds = read_confounds(run.confounds, config.confounds, n_volumes)
        check_trial_type_names(item, run.events, confounds.table.columns)
        dropped = _dropped_volumes(config, run, confounds.non_steady_state, n_volumes)
        last_onset = float(table["onset"].max())
        if last_onset >= n_volumes * repetition_time:
            raise InputError(
                f"events file {run.events}: an event starts at {last_onset:g} s, "
                f"after the run ends ({n_volumes} volumes x {repetition_time:g} s); "
                "is it the events file of this run?"
            )
        # As nilearn's sample_masks: the design is made on the whole run, then
        # the rows of the dropped volumes leave it (and the data) together.
        design = make_design(
            table,
            confounds.table,
            n_volumes,
            repetition_time,
            config.model,
            slice_time_ref=timing.slice_time_ref,
        )
        notes = [*item.warnings, *timing.warnings]
        if dropped:
            reason = (
                "--dummy-scans"
                if config.dummy_scans is not None
                else "non_steady_state_outlier columns"
            )
            notes.append(
                f"{run.name}: {len(dropped)} volume"
                f"{'' if len(dropped) == 1 else 's'} dropped ({reason}): "
                f"{', '.join(map(str, dropped))}"
            )
        prepared_run = _PreparedRun(run, design, n_volumes, timing, dropped, notes)
        prepared_run.design = design.iloc[prepared_run.kept]
        prepared.append(prepared_run)
    return _Designs(prepared, conditions, extras, implicit_baseline)


def _intersect_masks(runs: Sequence[RunInputs]) -> tuple[np.ndarray, nib.Nifti1Image]:
    reference = nib.load(runs[0].bold)
    mask = None
    for run in runs:
        bold = nib.load(run.bold)
        if bold.shape[:3] != reference.shape[:3] or not np.allclose(
            bold.affine, reference.affine, atol=1e-3
        ):
            raise InputError(
                f"BOLD series {run.bold} is not on the grid of {runs[0].bold.name}; "
                "all runs of a subject must be in the same space"
            )
        run_mask = read_mask(run.mask, bold, run.bold)
        mask = run_mask if mask is None else mask & run_mask
    if not mask.any():
        raise InputError(f"the brain masks of {runs[0].bold.parent} do not overlap")
    return mask, reference


def _read_series(bold_path: Path, mask: np.ndarray, smoothing_fwhm) -> np.ndarray:
    """A run's brain time series, (n_volumes, n_voxels) float32."""
    if smoothing_fwhm:
        from nilearn.image import smooth_img

        bold = smooth_img(read_bold(bold_path), smoothing_fwhm)
        return masked_timeseries(bold, mask)
    # Volume by volume: the run's full 4D array is never in memory.
    return load_masked_series(bold_path, mask, what="BOLD series")


def _design_figure_png(designs: _Designs, label: str, task: str) -> bytes:
    """The design-matrix figure as PNG bytes (written with the other outputs)."""
    figure = plot_designs(
        [run.design for run in designs.runs],
        [run.inputs.name for run in designs.runs],
        f"sub-{label} task-{task}: design matrices",
    )
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=90, format="png")
    return buffer.getvalue()


def _check_readable(runs: Sequence[RunInputs]) -> None:
    """Check every input file before C code (nibabel, indexed_gzip) opens it."""
    for run in runs:
        check_input_file(run.bold, what="BOLD series")
        check_input_file(run.mask, what="brain mask")
        check_input_file(run.confounds, what="confounds file")
        check_input_file(run.events, what="events file")
        if run.bold_json is not None:
            check_input_file(run.bold_json, what="BOLD sidecar")


def _relative_to(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` where it is inside, else absolute (POSIX)."""
    try:
        return Path(path).resolve().relative_to(Path(folder).resolve()).as_posix()
    except ValueError:
        return Path(path).resolve().as_posix()


def _volume(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    volume = np.zeros(mask.shape, dtype=np.float32)
    volume[mask] = values
    return volume


def run_subject(config: FirstLevelConfig, subject: str) -> SubjectResult:
    """Fit the first level of one subject and write its outputs.

    Parameters
    ----------
    config : FirstLevelConfig
        Inputs, model and options.
    subject : str
        ``"01"`` or ``"sub-01"``.

    Returns
    -------
    SubjectResult
        ``status`` is ``"done"`` or ``"skipped"`` (outputs already complete).

    Raises
    ------
    InputError, NotFoundError
        On bad input, before anything of the subject is written.
    OutputError
        When an output cannot be written (disk full, ...); the subject's
        partial outputs are removed.
    """
    label = layout.subject_label(subject)
    runs = find_runs(
        config.bids_dir,
        config.fmriprep,
        label,
        config.task,
        space=config.space,
        desc=config.desc,
        selection=config.selection,
    )
    _check_readable(runs)
    fingerprint = provenance.fingerprint(
        config.parameters(), [path for run in runs for path in run.files]
    )
    root = Path(config.output_dir)
    folder = layout.first_level_dir(label)
    with folder_lock(root / layout.lock_of(folder), what=f"sub-{label}"):
        remove_stale_temporaries(root / folder)
        if not config.force and _is_complete(config, label, fingerprint, len(runs)):
            log.info("sub-%s: outputs complete and up to date, skipped", label)
            return SubjectResult(f"sub-{label}", "skipped", len(runs))
        return _fit_and_write(config, label, runs, fingerprint)


def _fit_and_write(
    config: FirstLevelConfig, label: str, runs: list[RunInputs], fingerprint: str
) -> SubjectResult:
    mask, reference = _intersect_masks(runs)
    # Decompressing the first run (zlib-ng, mostly without the GIL) takes most of
    # a subject's time; the designs and their figure (matplotlib, with the GIL)
    # are made meanwhile, on the other core.  Only one run's data is read ahead,
    # so memory stays that of one run.
    with ThreadPoolExecutor(max_workers=2) as background:
        first_series = background.submit(
            _read_series, runs[0].bold, mask, config.model.smoothing_fwhm
        )
        designs = _prepare(config, runs)
        figure_png = background.submit(_design_figure_png, designs, label, config.task)
        fit = _fit_subject(
            config, label, designs, mask, reference, fingerprint, first_series
        )
        _write_subject(config, label, fit, figure_png)
    return SubjectResult(
        f"sub-{label}", "done", len(designs.runs), warnings=fit.warnings
    )


def _log_timing(label: str, prepared: Sequence[_PreparedRun]) -> None:
    """Say where the frames are in time and which volumes are left out."""
    references = sorted({run.timing.slice_time_ref for run in prepared})
    dropped = [len(run.dropped) for run in prepared]
    log.info(
        "sub-%s: frames at %s of the TR (slice_time_ref); %s volumes dropped per run",
        label,
        " or ".join(f"{value:g}" for value in references),
        ", ".join(map(str, dropped)),
    )


def _unusable_values(run: _PreparedRun, data: np.ndarray) -> list[str]:
    """A warning naming the run if voxels are NaN or zero in some volumes."""
    # Out-of-field voxels after motion correction, or a broken volume: the
    # fit leaves out voxels with NaN (see below) and fits zeros as signal.
    unusable = ~np.isfinite(data) | (data == 0)
    some = unusable.any(axis=0)
    if not some.any():
        return []
    every = int(unusable.all(axis=0).sum())
    return [
        f"{run.inputs.name} ({run.inputs.bold.name}): {int(some.sum())} voxels of the "
        f"brain mask are NaN or zero in some volumes ({every} in every volume)"
    ]


def _fit_subject(config, label, designs, mask, reference, fingerprint, first_series):
    prepared, extras = designs.runs, designs.extras
    volumes = sorted({run.n_volumes for run in prepared})
    trs = sorted({run.repetition_time for run in prepared})
    log.info(
        "sub-%s: %d run%s, %s volumes each, TR %s s, %d voxels in the brain mask%s",
        label,
        len(prepared),
        "" if len(prepared) == 1 else "s",
        " or ".join(map(str, volumes)),
        " or ".join(f"{tr:g}" for tr in trs),
        int(mask.sum()),
        f"; extra trial types modelled as own regressors: {', '.join(extras)}"
        if extras
        else "",
    )
    _log_timing(label, prepared)
    warnings = [note for run in prepared for note in run.warnings]
    if designs.implicit_baseline:
        warnings.append(
            "no 'baseline' trial type: contrasts against baseline use the "
            "implicit baseline"
        )
    # with two runs or more, each condition's effect is fitted too, for the
    # half-run maps the roi level measures response profiles on
    conditions = (
        condition_contrasts(
            [*designs.conditions, *extras],
            [list(run.design.columns) for run in prepared],
            list(config.contrasts),
        )
        if len(prepared) >= 2
        else {}
    )
    per_run: list[dict[str, ContrastResult]] = []
    for index, run in enumerate(prepared, start=1):
        columns = list(run.design.columns)
        vectors = {
            name: contrast_vector(
                contrast, columns, implicit_baseline=designs.implicit_baseline
            )
            for name, contrast in {**config.contrasts, **conditions}.items()
        }
        log.info(
            "sub-%s: fitting %s (%d of %d)",
            label,
            run.inputs.name,
            index,
            len(prepared),
        )
        if index == 1:
            data = first_series.result()
        else:
            data = _read_series(run.inputs.bold, mask, config.model.smoothing_fwhm)
        if run.dropped:
            data = data[run.kept]
        warnings += _unusable_values(run, data)
        per_run.append(fit_ar1_contrasts(data, run.design.to_numpy(), vectors))
        del data
    # One run is its own result, as in nilearn's FirstLevelModel.
    if len(per_run) == 1:
        combined = per_run[0]
    else:
        combined = dict(
            zip(
                config.contrasts,
                map_threads(
                    lambda name: combine_runs(
                        [results[name] for results in per_run], config.run_combination
                    ),
                    config.contrasts,
                ),
                strict=True,
            )
        )
    # A voxel is unusable when no contrast could be estimated in it (NaN or
    # constant series); a contrast degenerate everywhere is caught before the fit.
    degenerate = np.logical_and.reduce([r.degenerate for r in combined.values()])
    if degenerate.any():
        where = (
            "in every run"
            if config.run_combination == "precision" or len(per_run) == 1
            else "in a run (equal-weight means need every run)"
        )
        warnings.append(
            f"{int(degenerate.sum())} voxels with NaN or constant time series {where} "
            "were left out of the mask"
        )
    final_mask = mask.copy()
    final_mask[mask] = ~degenerate
    for warning in warnings:
        log.warning("sub-%s: %s", label, warning)
    halves = half_maps(
        label,
        config.task,
        per_run,
        list(config.contrasts),
        conditions,
        config.run_combination,
    )
    return _SubjectFit(
        designs, combined, mask, final_mask, reference, fingerprint, warnings, halves
    )


def _write_subject(
    config: FirstLevelConfig, label: str, fit: _SubjectFit, figure_png: Future
) -> None:
    """Write maps, figure and sidecars; their manifest marks the subject done."""
    root = Path(config.output_dir)
    prepared, extras = fit.designs.runs, fit.designs.extras
    keep = fit.final_mask[fit.fit_mask]
    all_conditions = [*fit.designs.conditions, *extras]
    base = MapSidecar(
        AnalysisLevel="first_level",
        Model=ModelInfo(
            HRF=config.model.hrf_model,
            DriftModel=config.model.drift_model,
            HighPassFilter=config.model.high_pass,
            NoiseModel=config.model.noise_model,
            SmoothingFWHM=config.model.smoothing_fwhm,
            RunCombination=config.run_combination,
        ),
        Software=software(),
        Confounds=list(config.confounds),
        Dependencies=dependency_versions(),
        Subject=f"sub-{label}",
        Task=config.task,
        Conditions=all_conditions,
        ExtraConditions=extras,
        ImplicitBaseline=fit.designs.implicit_baseline,
        Runs=[_relative_to(run.inputs.bold, config.bids_dir) for run in prepared],
        InputFiles=input_files(
            [path for run in prepared for path in run.inputs.files], config.bids_dir
        ),
        Mask=str(layout.first_level_mask(label, config.task).name),
        Parameters={
            **config.parameters(),
            "Fingerprint": fit.fingerprint,
            "RepetitionTime": sorted({run.repetition_time for run in prepared}),
            "NumberOfVolumes": [run.n_volumes for run in prepared],
            "SliceTimeRef": [run.timing.slice_time_ref for run in prepared],
            "DroppedVolumes": [list(run.dropped) for run in prepared],
            "DroppedVolumesReason": "--dummy-scans"
            if config.dummy_scans is not None
            else "fMRIPrep's non_steady_state_outlier columns",
            "Warnings": fit.warnings,
        },
    )
    header = fit.reference.header.copy()
    header.set_data_dtype(np.float32)
    header.set_xyzt_units("mm", "sec")
    units = {
        "effect": "percent signal change",
        "variance": "(percent signal change)^2",
        "t": "t",
        "z": "z",
    }
    maps, sidecars = [], []
    for name, result in fit.combined.items():
        contrast = config.contrasts[name]
        for stat in layout.FIRST_LEVEL_STAT_TYPES:
            values = np.where(keep, getattr(result, stat), 0)
            relative = layout.first_level_map(label, config.task, name, stat)
            image = nib.Nifti1Image(
                _volume(values, fit.fit_mask), fit.reference.affine, header
            )
            maps.append((image, root / relative))
            sidecar = base.model_copy(
                update={
                    "StatType": stat,
                    "Units": units[stat],
                    "DegreesOfFreedom": result.dof,
                    "Contrasts": {
                        name: contrast_info(
                            contrast, all_conditions or list(CONDITIONS)
                        )
                    },
                }
            )
            sidecars.append((sidecar, root / layout.sidecar_of(relative)))
    for relative, result, name, stat, positions in fit.halves:
        values = np.where(keep, getattr(result, stat), 0)
        image = nib.Nifti1Image(
            _volume(values, fit.fit_mask), fit.reference.affine, header
        )
        image.header.set_xyzt_units("mm", "sec")
        maps.append((image, root / relative))
        contrast = config.contrasts.get(name) or Contrast(
            name, f"{name} response", {name: 1.0}
        )
        sidecar = base.model_copy(
            update={
                "StatType": stat,
                "Units": units[stat],
                "DegreesOfFreedom": result.dof,
                "Runs": [base.Runs[i] for i in positions],
                "Contrasts": {
                    name: contrast_info(contrast, all_conditions or list(CONDITIONS))
                },
            }
        )
        sidecars.append((sidecar, root / layout.sidecar_of(relative)))
    mask_path = layout.first_level_mask(label, config.task)
    # The maps' header (the BOLD's qform and sform codes, mm and s), so that
    # tools that compare headers take mask and maps for one space.
    mask_header = header.copy()
    mask_header.set_data_dtype(np.uint8)
    mask_image = nib.Nifti1Image(
        fit.final_mask.astype(np.uint8), fit.reference.affine, mask_header
    )
    maps.append((mask_image, root / mask_path))
    sidecars.append(
        (
            base.model_copy(update={"StatType": "mask"}),
            root / layout.sidecar_of(mask_path),
        )
    )
    figure_path = root / layout.design_matrix_png(label, config.task)
    written = [path for _, path in maps + sidecars] + [figure_path]
    with output_set(
        root / layout.first_level_dir(label),
        layout.first_level_manifest(label, config.task).name,
        [path.name for path in written],
        fit.fingerprint,
    ):
        # two compressors at a time: zlib releases the GIL
        with ThreadPoolExecutor(max_workers=2) as writers:
            list(writers.map(lambda job: save_image(*job), maps))
        with atomic_output(figure_path) as temporary:
            temporary.write_bytes(figure_png.result())
        for sidecar, path in sidecars:
            write_json(sidecar, path)


def write_dataset_description(
    output_dir: Path, bids_dir: Path, source_dataset: str | None = None
) -> None:
    """Write the BIDS-derivative ``dataset_description.json`` of the GLM outputs.

    ``SourceDatasets`` names the raw dataset by ``source_dataset`` if given (a
    URL; ``""`` names none), else by its path relative to ``output_dir``
    (``../..`` for the usual ``BIDS_DIR/derivatives/glm``), so that the file
    stays true when the dataset is moved and tells nothing of the machine.
    Written under the output folder's lock, which also removes what an
    interrupted write of it left.
    """
    if source_dataset is None:
        source_dataset = Path(
            os.path.relpath(Path(bids_dir).resolve(), Path(output_dir).resolve())
        ).as_posix()
    found = container()
    description = DatasetDescription(
        Name="LAION-fMRI GLM derivatives",
        GeneratedBy=[
            Generator(
                Name="laion-fmri-dataloader",
                Version=__version__,
                Description="First- and group-level GLM of the category localizer",
                Container=None
                if found is None
                else {"Type": found[0], **({"Tag": found[1]} if found[1] else {})},
            )
        ],
        SourceDatasets=[{"URL": source_dataset}] if source_dataset else [],
    )
    root = Path(output_dir)
    with folder_lock(root / layout.lock_of(PurePosixPath(".")), what=str(root)):
        remove_stale_temporaries(root)
        write_json(description, root / "dataset_description.json")
