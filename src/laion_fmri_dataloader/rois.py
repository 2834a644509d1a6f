"""Functional regions of interest: the canonical table, defining contrasts, sizes.

The vocabulary of the ``roi`` level (:mod:`laion_fmri_dataloader.pipeline.roi`):

- :data:`CANONICAL_ROIS`, a table of category-selective regions with an
  approximate MNI152 centre per hemisphere and the paper that first described
  the region.  It only names parcels: a parcel found by the group-constrained
  method is called after the nearest entry of its own category within
  :data:`NAMING_RADIUS_MM` (:func:`name_parcels`), else it keeps a numbered
  name (``face3``).  The centres are rounded, typical group peak locations
  (right hemisphere; the left mirrors ``x`` unless listed), not an atlas: where
  two regions of one category lie close together (FFA and pFs belong to
  different categories, so they never compete) the nearer one wins.
- :data:`DEFAULT_ROI_CONTRASTS`, the defining contrast of each category and the
  direction in which it is thresholded (:class:`RoiContrast`).
- :class:`RoiSize`, the rule that picks a subject's voxels inside a parcel
  (top percentage, voxel count or a z threshold).

Examples
--------
>>> parse_roi_size("10%")
RoiSize(kind='percent', value=10.0)
>>> parse_roi_size("z>3.1").describe()
'voxels with z > 3.1'
>>> parse_roi_contrast("body=bodyVsObject")
RoiContrast(category='body', contrast='bodyVsObject', direction=1)
>>> [entry.name for entry in CANONICAL_ROIS if entry.category == "scene"]
['PPA', 'OPA', 'RSC']
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from laion_fmri_dataloader.errors import InvalidLabelError, InvalidParameterError
from laion_fmri_dataloader.layout import validate_label

__all__ = [
    "CANONICAL_ROIS",
    "DEFAULT_ROI_CONTRASTS",
    "DEFAULT_ROI_SIZE",
    "HEMISPHERES",
    "NAMING_RADIUS_MM",
    "CanonicalRoi",
    "RoiContrast",
    "RoiSize",
    "canonical_entry",
    "name_parcels",
    "parse_roi_contrast",
    "parse_roi_size",
]

#: Hemisphere labels of the ``hemi`` entity (MNI x < 0 is left).
HEMISPHERES = ("L", "R")

#: A parcel whose peak is farther than this from every entry of its category
#: keeps a numbered name (mm).  Half the ~30 mm between neighbouring regions of
#: one category (OFA and FFA, PPA and OPA), so that a name is never ambiguous.
NAMING_RADIUS_MM = 15.0


@dataclass(frozen=True)
class CanonicalRoi:
    """One entry of the canonical table.

    Attributes
    ----------
    name : str
        Abbreviation used in file names (``FFA``).
    category : str
        Preferred category: the defining contrast's category (``face``).
    description : str
        Full name.
    centre_right : tuple of float or None
        Approximate MNI152 centre (mm) in the right hemisphere; None if the
        region is left-lateralised and not listed on the right.
    centre_left : tuple of float or None
        Left-hemisphere centre; by default the right centre with ``x`` negated.
    reference : str
        The publication that described the region.
    """

    name: str
    category: str
    description: str
    centre_right: tuple[float, float, float] | None
    reference: str
    centre_left: tuple[float, float, float] | None = None

    def centre(self, hemi: str) -> tuple[float, float, float] | None:
        """Centre (mm) in hemisphere ``hemi`` (``L`` or ``R``), or None."""
        if hemi == "R":
            return self.centre_right
        if self.centre_left is not None:
            return self.centre_left
        if self.centre_right is None:
            return None
        x, y, z = self.centre_right
        return (-x, y, z)


def _roi(name, category, description, right, reference, left=None) -> CanonicalRoi:
    return CanonicalRoi(name, category, description, right, reference, left)


#: Category-selective regions of occipito-temporal cortex, by category.
CANONICAL_ROIS: tuple[CanonicalRoi, ...] = (
    _roi(
        "FFA",
        "face",
        "fusiform face area",
        (40.0, -52.0, -18.0),
        "Kanwisher, McDermott & Chun (1997) J Neurosci 17:4302",
    ),
    _roi(
        "OFA",
        "face",
        "occipital face area",
        (40.0, -78.0, -10.0),
        "Gauthier et al. (2000) J Cogn Neurosci 12:495",
    ),
    _roi(
        "pSTS",
        "face",
        "posterior superior temporal sulcus face area",
        (52.0, -50.0, 8.0),
        "Puce et al. (1998) J Neurosci 18:2188",
    ),
    _roi(
        "PPA",
        "scene",
        "parahippocampal place area",
        (26.0, -44.0, -10.0),
        "Epstein & Kanwisher (1998) Nature 392:598",
    ),
    _roi(
        "OPA",
        "scene",
        "occipital place area (transverse occipital sulcus)",
        (34.0, -82.0, 20.0),
        "Dilks et al. (2013) J Neurosci 33:1331",
    ),
    _roi(
        "RSC",
        "scene",
        "retrosplenial complex",
        (16.0, -54.0, 10.0),
        "Epstein (2008) Trends Cogn Sci 12:388",
    ),
    _roi(
        "LO",
        "object",
        "lateral occipital complex, lateral part",
        (44.0, -76.0, -6.0),
        "Malach et al. (1995) PNAS 92:8135",
    ),
    _roi(
        "pFs",
        "object",
        "posterior fusiform sulcus (ventral lateral occipital complex)",
        (36.0, -46.0, -20.0),
        "Grill-Spector et al. (1999) Neuron 24:187",
    ),
    _roi(
        "EBA",
        "body",
        "extrastriate body area",
        (48.0, -70.0, 2.0),
        "Downing et al. (2001) Science 293:2470",
    ),
    _roi(
        "FBA",
        "body",
        "fusiform body area",
        (42.0, -46.0, -20.0),
        "Peelen & Downing (2005) J Neurophysiol 93:603",
    ),
    _roi(
        "VWFA",
        "character",
        "visual word form area",
        None,
        "Cohen et al. (2000) Brain 123:291",
        left=(-44.0, -56.0, -14.0),
    ),
)


@dataclass(frozen=True)
class RoiContrast:
    """The contrast that defines one category's parcels and fROIs.

    Attributes
    ----------
    category : str
        What the regions prefer (``face``); names the canonical entries
        searched and the numbered names (``face1``).
    contrast : str
        First-level contrast (``faceVsObject``).
    direction : {1, -1}
        1 selects voxels with z > 0, -1 with z < 0 (``face=-objectVsFace``).
    """

    category: str
    contrast: str
    direction: Literal[1, -1] = 1

    def describe(self) -> str:
        """``faceVsObject`` or ``-objectVsFace`` (as given on the command line)."""
        return ("-" if self.direction < 0 else "") + self.contrast


#: Defining contrasts of the face, scene and object regions.
DEFAULT_ROI_CONTRASTS: dict[str, RoiContrast] = {
    "face": RoiContrast("face", "faceVsObject"),
    "scene": RoiContrast("scene", "sceneVsObject"),
    "object": RoiContrast("object", "objectVsBaseline"),
}


def parse_roi_contrast(text: str) -> RoiContrast:
    """Parse ``--roi-contrast NAME=CONTRAST`` (``-CONTRAST`` for z < 0).

    Raises
    ------
    InvalidLabelError
        If the text is not ``NAME=CONTRAST`` with BIDS labels.
    """
    name, sep, contrast = (part.strip() for part in text.partition("="))
    direction: Literal[1, -1] = 1
    if contrast.startswith("-"):
        direction, contrast = -1, contrast[1:].strip()
    if not sep or not name or not contrast:
        raise InvalidLabelError(
            f"--roi-contrast {text!r} must look like NAME=CONTRAST, "
            "e.g. body=bodyVsObject"
        )
    return RoiContrast(
        validate_label(name, "ROI name"),
        validate_label(contrast, "contrast"),
        direction,
    )


_Z_RULE = re.compile(r"z\s*>\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)")


@dataclass(frozen=True)
class RoiSize:
    """How many of a parcel's voxels make a subject's fROI.

    Attributes
    ----------
    kind : {'percent', 'count', 'z'}
        ``percent``: the top ``value`` % of the parcel's voxels by z (at least
        one voxel; the count is rounded down, as funROI does); ``count``: the
        top ``value`` voxels (all of them in a smaller parcel); ``z``: every
        voxel whose z in the contrast's direction exceeds ``value``.
    value : float
        Percentage in (0, 100], voxel count >= 1, or z threshold.
    """

    kind: Literal["percent", "count", "z"]
    value: float

    def __post_init__(self) -> None:
        if self.kind == "percent" and not 0.0 < self.value <= 100.0:
            raise InvalidParameterError(
                f"--roi-size {self.value:g}% is outside (0, 100]%"
            )
        if self.kind == "count" and not (
            self.value >= 1 and float(self.value).is_integer()
        ):
            raise InvalidParameterError(
                f"--roi-size {self.value:g} must be a positive whole number of voxels"
            )
        if self.kind == "z" and not math.isfinite(self.value):
            raise InvalidParameterError(f"--roi-size z>{self.value} is not finite")

    def describe(self) -> str:
        """The rule in words, for logs and sidecars."""
        if self.kind == "percent":
            return f"top {self.value:g}% of the parcel's voxels by z"
        if self.kind == "count":
            return f"top {int(self.value)} voxels of the parcel by z"
        return f"voxels with z > {self.value:g}"

    def to_text(self) -> str:
        """The rule as given on the command line (``10%``, ``50``, ``z>3.1``)."""
        if self.kind == "percent":
            return f"{self.value:g}%"
        if self.kind == "count":
            return str(int(self.value))
        return f"z>{self.value:g}"


#: The top 10 % of a parcel's voxels (as in Julian et al. 2012).
DEFAULT_ROI_SIZE = RoiSize("percent", 10.0)


def parse_roi_size(text: str) -> RoiSize:
    """Parse ``--roi-size``: ``10%``, ``50`` (voxels) or ``z>3.1``.

    Raises
    ------
    InvalidParameterError
        If the text is none of these, the percentage is outside (0, 100] or
        the count is not a positive whole number.
    """
    compact = str(text).strip()
    z_rule = _Z_RULE.fullmatch(compact)
    if z_rule:
        kind, number = "z", z_rule.group(1)
    elif compact.endswith("%"):
        kind, number = "percent", compact[:-1]
    else:
        kind, number = "count", compact
    try:
        value = float(number)
    except ValueError:
        raise InvalidParameterError(
            f"--roi-size {text!r} is not a percentage (10%), a voxel count (50) "
            "or a z threshold (z>3.1)"
        ) from None
    return RoiSize(kind, value)


def name_parcels(
    category: str,
    peaks: Sequence[tuple[float, float, float]],
    hemispheres: Sequence[str],
    radius_mm: float = NAMING_RADIUS_MM,
    table: Sequence[CanonicalRoi] = CANONICAL_ROIS,
) -> list[tuple[str, float | None]]:
    """Name parcels after the nearest canonical entry of their category.

    Each entry names at most one parcel per hemisphere, the nearest one; other
    parcels, and parcels farther than ``radius_mm`` from every entry, are
    numbered ``<category><k>`` in the order given (k counts from 1 over every
    numbered parcel of the category).

    Parameters
    ----------
    category : str
        The parcels' category (``face``).
    peaks : sequence of (x, y, z)
        MNI coordinate (mm) of each parcel's peak.
    hemispheres : sequence of {'L', 'R'}
        Hemisphere of each parcel.
    radius_mm : float
        Largest distance from an entry that still gives its name.
    table : sequence of CanonicalRoi
        The table searched.

    Returns
    -------
    list of (name, distance_mm)
        Distance to the entry whose name was given, None for a numbered name.

    Examples
    --------
    >>> named = name_parcels(
    ...     "face", [(42, -50, -20), (-41, -53, -17), (0, -90, 0)], ["R", "L", "R"]
    ... )
    >>> [(name, distance and round(distance, 2)) for name, distance in named]
    [('FFA', 3.46), ('FFA', 1.73), ('face1', None)]
    """
    candidates = []
    for index, (peak, hemi) in enumerate(zip(peaks, hemispheres, strict=True)):
        for entry in table:
            centre = entry.centre(hemi) if entry.category == category else None
            if centre is None:
                continue
            distance = math.dist(peak, centre)
            if distance <= radius_mm:
                candidates.append((distance, index, entry.name, hemi))
    names: list[tuple[str, float | None] | None] = [None] * len(peaks)
    taken = set()
    for distance, index, name, hemi in sorted(candidates):
        if names[index] is None and (name, hemi) not in taken:
            names[index] = (name, distance)
            taken.add((name, hemi))
    numbered = 0
    for index, given in enumerate(names):
        if given is None:
            numbered += 1
            names[index] = (f"{category}{numbered}", None)
    return [name for name in names if name is not None]


def canonical_entry(name: str) -> CanonicalRoi | None:
    """The table entry called ``name``, or None (for a numbered parcel)."""
    return _BY_NAME.get(name)


_BY_NAME: Mapping[str, CanonicalRoi] = {entry.name: entry for entry in CANONICAL_ROIS}
