"""When each volume of a run was acquired: repetition time and slice timing.

The repetition time comes from the BOLD series' sidecars (fMRIPrep's, merged
over the raw dataset's by the inheritance principle); when they lack it, from
the NIfTI header's ``pixdim[4]`` in the header's time unit, with a warning.  A
sidecar and a header that disagree are an error, unless ``--repetition-time``
is given, which overrides both.

The frame times follow nilearn's ``slice_time_ref`` convention as
``first_level_from_bids`` sets it: the fraction of the TR at which the volumes
are sampled is fMRIPrep's ``StartTime`` (the reference time of its slice-timing
correction, written since fMRIPrep 21.0) divided by the TR, 0 without it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib

from laion_fmri_dataloader.errors import InputError

__all__ = ["RunTiming", "read_metadata", "read_timing"]

# Header and sidecar agree when within this many seconds.
_TR_TOLERANCE = 1e-3
_TIME_UNITS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}


@dataclass(frozen=True)
class RunTiming:
    """Acquisition timing of one run.

    Attributes
    ----------
    repetition_time : float
        Seconds between volumes.
    slice_time_ref : float
        Fraction of the TR at which each volume is sampled (nilearn's
        ``slice_time_ref``): frame ``i`` is at ``(i + slice_time_ref) * TR`` s.
    warnings : list of str
        What was assumed, in words naming the file.
    """

    repetition_time: float
    slice_time_ref: float = 0.0
    warnings: list[str] = field(default_factory=list)


def read_metadata(sidecars: Sequence[Path]) -> tuple[dict[str, object], dict]:
    """Merge JSON sidecars in the order given (later ones override).

    Returns
    -------
    metadata : dict
        The merged keys.
    sources : dict of str to Path
        The sidecar each key was taken from.

    Raises
    ------
    InputError
        If a sidecar cannot be read or is not a JSON object.
    """
    metadata: dict[str, object] = {}
    sources: dict[str, Path] = {}
    for path in sidecars:
        try:
            content = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(f"sidecar {path} cannot be read: {error}") from None
        if not isinstance(content, dict):
            raise InputError(f"sidecar {path} must hold a JSON object")
        metadata.update(content)
        sources.update(dict.fromkeys(content, Path(path)))
    return metadata, sources


def _header_tr(bold: nib.Nifti1Image) -> tuple[float, str]:
    """TR of the header in seconds (0 if absent) and the unit it was given in."""
    zooms = bold.header.get_zooms()
    value = float(zooms[3]) if len(zooms) > 3 else 0.0
    unit = bold.header.get_xyzt_units()[1]
    return value * _TIME_UNITS.get(unit, 1.0), unit


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def read_timing(
    sidecars: Sequence[Path],
    bold: nib.Nifti1Image,
    bold_path: Path,
    *,
    repetition_time: float | None = None,
    slice_time_ref: float | None = None,
) -> RunTiming:
    """Repetition time and ``slice_time_ref`` of a run.

    Parameters
    ----------
    sidecars : sequence of Path
        The run's JSON sidecars, merged in this order (:func:`read_metadata`).
    bold : nibabel.Nifti1Image
        The BOLD series (its header is read, not its data).
    bold_path : Path
        Its file, for messages.
    repetition_time : float, optional
        Seconds; overrides sidecar and header (``--repetition-time``).
    slice_time_ref : float, optional
        Fraction of the TR in [0, 1); overrides ``StartTime``
        (``--slice-time-ref``).

    Returns
    -------
    RunTiming

    Raises
    ------
    InputError
        If a sidecar cannot be read, no TR is known, the sidecar's TR is not a
        positive number or differs from the header's, or ``StartTime`` is not
        within the TR.
    """
    warnings = []
    metadata, sources = read_metadata(sidecars)
    header_tr, unit = _header_tr(bold)
    sidecar_tr = metadata.get("RepetitionTime")
    if sidecar_tr is not None and not (_number(sidecar_tr) or 0) > 0:
        raise InputError(
            f"sidecar {sources['RepetitionTime']}: RepetitionTime must be a "
            f"positive number of seconds; got {sidecar_tr!r}"
        )
    sidecar_tr = _number(sidecar_tr)
    if repetition_time is not None:
        tr = float(repetition_time)
        known = sidecar_tr or header_tr
        if known and abs(known - tr) > _TR_TOLERANCE:
            warnings.append(
                f"{bold_path.name}: --repetition-time {tr:g} s used instead of "
                f"{known:g} s from the {'sidecar' if sidecar_tr else 'NIfTI header'}"
            )
    elif sidecar_tr is not None:
        tr = sidecar_tr
        if header_tr > 0 and abs(header_tr - tr) > _TR_TOLERANCE:
            raise InputError(
                f"{bold_path}: TR in the NIfTI header ({header_tr:g} s) differs from "
                f"RepetitionTime in {sources['RepetitionTime'].name} ({tr:g} s); "
                "correct one of them or give --repetition-time"
            )
    elif header_tr > 0:
        tr = header_tr
        warnings.append(
            f"{bold_path.name}: no RepetitionTime in its sidecars; TR {tr:g} s taken "
            f"from the NIfTI header (pixdim[4] in {unit})"
        )
    else:
        raise InputError(
            f"{bold_path}: no RepetitionTime in a sidecar and none in the NIfTI "
            "header; add the sidecar or give --repetition-time"
        )
    if slice_time_ref is not None:
        return RunTiming(tr, float(slice_time_ref), warnings)
    start_time = metadata.get("StartTime")
    if start_time is None:
        if "SliceTiming" in metadata and "SliceTimingCorrected" not in metadata:
            warnings.append(
                f"{bold_path.name}: the sidecars have SliceTiming but neither "
                "StartTime nor SliceTimingCorrected (fMRIPrep before 21.0, which "
                "corrected slice timing to the middle of the TR by default); frames "
                "are taken at the start of each TR (slice_time_ref 0, as nilearn "
                "does): give --slice-time-ref 0.5 if slice timing was corrected"
            )
        return RunTiming(tr, 0.0, warnings)
    start = _number(start_time)
    if start is None or not 0 <= start < tr:
        raise InputError(
            f"sidecar {sources['StartTime']}: StartTime must be a number of "
            f"seconds in [0, TR = {tr:g}); got {start_time!r}; correct it or give "
            "--slice-time-ref"
        )
    return RunTiming(tr, start / tr, warnings)
