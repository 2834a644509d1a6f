"""The category-selective regions of the ground truth and their responses.

Each region is a smooth plateau at a textbook MNI coordinate that responds to
every category with a fixed fraction of ``effect_size``; per subject its
location and amplitude are jittered (``docs/simulation.md``, "Responses").
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from laion_fmri_dataloader.contrasts import CONDITIONS
from laion_fmri_dataloader.simulate.anatomy import Geometry
from laion_fmri_dataloader.simulate.config import (
    BASELINE,
    CONTRAST_WEIGHTS,
    CORE_CATEGORIES,
    EXTRA_CATEGORIES,
    SimulationConfig,
)

__all__ = ["REGIONS", "TAPER", "Region", "RegionResponses", "place_regions"]

#: mm from full response to exactly zero.
TAPER = 3.0
# response of a pure white-matter voxel, relative to grey matter
_GM_WEIGHT_FLOOR = 0.75
_JITTER_SD_MM = 3.0
_GAIN_LOG_SD = 0.15


@dataclasses.dataclass(frozen=True)
class Region:
    """A category-selective region.

    Attributes
    ----------
    name : str
        Region name (``FFA``).
    centre : tuple of float
        MNI centre in mm of the right hemisphere's region; the left one mirrors x.
    hemispheres : tuple of str
        Hemispheres that have the region (``"L"``, ``"R"``).
    core_radius : float
        Radius in mm of full response.
    responses : dict of str to float
        Response to each category as a fraction of ``effect_size``.
    hemisphere_gain : dict of str to float
        Amplitude of each hemisphere's region, relative.
    requires : str or None
        The extra category without which the region is not simulated.
    """

    name: str
    centre: tuple[float, float, float]
    hemispheres: tuple[str, ...]
    core_radius: float
    responses: dict[str, float]
    hemisphere_gain: dict[str, float]
    requires: str | None = None


#: Every region that can be simulated, in the order their jitter is drawn.
REGIONS = (
    Region(
        "EVC",
        (10.0, -90.0, 0.0),
        ("L", "R"),
        9.0,
        {c: 1.0 for c in (*CORE_CATEGORIES, *EXTRA_CATEGORIES)},
        {"L": 1.0, "R": 1.0},
    ),
    Region(
        "FFA",
        (40.0, -52.0, -18.0),
        ("L", "R"),
        7.0,
        {
            "face": 1.0,
            "scene": 0.2,
            "object": 0.3,
            "body": 0.35,
            "character": 0.3,
            "scrambled": 0.1,
        },
        {"L": 0.8, "R": 1.0},
    ),
    Region(
        "PPA",
        (26.0, -44.0, -10.0),
        ("L", "R"),
        7.0,
        {
            "face": 0.2,
            "scene": 1.0,
            "object": 0.35,
            "body": 0.2,
            "character": 0.2,
            "scrambled": 0.1,
        },
        {"L": 1.0, "R": 1.0},
    ),
    Region(
        "LO",
        (44.0, -76.0, -6.0),
        ("L", "R"),
        7.0,
        {
            "face": 0.5,
            "scene": 0.5,
            "object": 1.0,
            "body": 0.6,
            "character": 0.5,
            "scrambled": 0.3,
        },
        {"L": 1.0, "R": 1.0},
    ),
    Region(
        "EBA",
        (46.0, -70.0, 2.0),
        ("L", "R"),
        7.0,
        {
            "face": 0.35,
            "scene": 0.2,
            "object": 0.35,
            "body": 1.0,
            "character": 0.2,
            "scrambled": 0.1,
        },
        {"L": 0.9, "R": 1.0},
        requires="body",
    ),
    Region(
        "VWFA",
        (-44.0, -56.0, -14.0),
        ("L",),
        7.0,
        {
            "face": 0.3,
            "scene": 0.2,
            "object": 0.3,
            "body": 0.2,
            "character": 1.0,
            "scrambled": 0.15,
        },
        {"L": 1.0},
        requires="character",
    ),
)


@dataclasses.dataclass(frozen=True)
class RegionResponses:
    """One subject's true responses.

    Attributes
    ----------
    responses : numpy.ndarray
        Response to each category of :attr:`SimulationConfig.categories`, in
        percent signal change per unit regressor, (n_categories, n_voxels)
        float32.
    contrasts : dict of str to numpy.ndarray
        True effect of each standard contrast, (n_voxels,) float64.
    placed : list of dict
        Every region as placed in this subject, for ``simulation.json``.
    """

    responses: np.ndarray
    contrasts: dict[str, np.ndarray]
    placed: list[dict[str, Any]]


def _profile(distance: np.ndarray, core_radius: float) -> np.ndarray:
    """Plateau of 1 within ``core_radius`` mm, smoothstep taper to exactly 0."""
    s = np.clip((distance - core_radius) / TAPER, 0.0, 1.0)
    return 1.0 - s * s * (3.0 - 2.0 * s)


def _active_regions(config: SimulationConfig) -> list[Region]:
    return [
        region
        for region in REGIONS
        if region.requires is None or region.requires in config.extra_categories
    ]


def place_regions(
    config: SimulationConfig, geometry: Geometry, rng: np.random.Generator
) -> RegionResponses:
    """Place every region in one subject and sum their responses.

    Draws the jitter of every region and hemisphere from ``rng``, also of those
    not simulated, so that the streams do not depend on which extra categories
    or ``null`` were asked for.  With ``config.null`` the responses are zero
    (the regions are still recorded).
    """
    n_vox = geometry.coords.shape[0]
    categories = config.categories
    gm_weight = _GM_WEIGHT_FLOOR + (1.0 - _GM_WEIGHT_FLOOR) * geometry.gm
    responses = np.zeros((len(categories), n_vox), dtype=np.float64)
    contrast_effects = {name: np.zeros(n_vox) for name in CONTRAST_WEIGHTS}
    placed = []
    active = _active_regions(config)
    for region in REGIONS:
        for hemisphere in ("L", "R"):
            shift = rng.normal(0.0, _JITTER_SD_MM, size=3)
            gain = math.exp(rng.normal(0.0, _GAIN_LOG_SD))
            if hemisphere not in region.hemispheres or region not in active:
                continue
            centre = np.array(region.centre, dtype=np.float64)
            if hemisphere == "L":
                centre[0] = -abs(centre[0])
            else:
                centre[0] = abs(centre[0])
            centre = centre + shift
            amplitude = config.effect_size * gain * region.hemisphere_gain[hemisphere]
            distance = np.sqrt(((geometry.coords - centre) ** 2).sum(axis=1))
            shape = _profile(distance, region.core_radius) * gm_weight
            for index, category in enumerate(categories):
                responses[index] += amplitude * region.responses[category] * shape
            for name, weights in CONTRAST_WEIGHTS.items():
                # per region, so that a contrast null in a region is exactly 0
                # fixation (baseline) has no response of its own
                net = sum(
                    weight * region.responses.get(condition, 0.0)
                    for weight, condition in zip(weights, CONDITIONS, strict=True)
                    if condition != BASELINE
                )
                if net != 0.0:
                    contrast_effects[name] += amplitude * net * shape
            placed.append(
                {
                    "region": region.name,
                    "hemisphere": hemisphere,
                    "centre_mm": [round(float(x), 3) for x in centre],
                    "amplitude_percent": round(amplitude, 6),
                    "core_radius_mm": region.core_radius,
                    "taper_mm": TAPER,
                    "responses": {c: region.responses[c] for c in categories},
                }
            )
    if config.null:
        responses[:] = 0.0
        contrast_effects = {name: np.zeros(n_vox) for name in CONTRAST_WEIGHTS}
    return RegionResponses(responses.astype(np.float32), contrast_effects, placed)
