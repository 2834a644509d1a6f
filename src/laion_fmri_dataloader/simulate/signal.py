"""The signal model: per-subject maps and the BOLD series of a run.

A voxel's series is ``S0 * (1 + percent / 100)``, where ``percent`` sums the
task response, AR(1) noise, drift, motion leakage and a global fluctuation;
``docs/simulation.md`` ("Signal model", "Intensity", "Noise") gives the
numbers.  Arrays in, arrays out.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from laion_fmri_dataloader.simulate.anatomy import (
    FWHM_TO_SIGMA,
    NOISE_FWHM_VOXELS,
    Geometry,
    gaussian_kernel,
    smooth,
    smooth_field,
)
from laion_fmri_dataloader.simulate.config import SimulationConfig
from laion_fmri_dataloader.simulate.motion import HEAD_RADIUS
from laion_fmri_dataloader.simulate.regions import place_regions

__all__ = [
    "AR1_CENTRE",
    "AR1_HALF_RANGE",
    "GLOBAL_AR1",
    "GLOBAL_SD",
    "N_DRIFT_COSINES",
    "RunSignals",
    "SubjectMaps",
    "simulate_run",
    "subject_maps",
    "thermal_noise_sd",
]

#: Scanner drift: the first discrete-cosine components.
N_DRIFT_COSINES = 3
#: The noise AR(1) coefficient spans centre +- half range.
AR1_CENTRE = 0.3
AR1_HALF_RANGE = 0.2
#: AR(1) coefficient of the slow global fluctuation (respiration, arousal).
GLOBAL_AR1 = 0.95
#: Its standard deviation, percent.
GLOBAL_SD = 0.25


def thermal_noise_sd(resolution: float) -> float:
    """Thermal noise sd in percent, which scales with the voxel volume."""
    return 0.7 * (4.0 / resolution) ** 1.5


@dataclasses.dataclass(frozen=True)
class SubjectMaps:
    """One subject's true responses and the parameters of its noise.

    Voxel vectors (the mask's voxels in C order); float32 unless said.

    Attributes
    ----------
    responses : numpy.ndarray
        Response to each category, percent per unit regressor,
        (n_categories, n_voxels).
    contrasts : dict of str to numpy.ndarray
        True effect of each standard contrast, float64.
    ar1 : numpy.ndarray
        AR(1) coefficient of the noise.
    noise_sd : numpy.ndarray
        Noise standard deviation in percent, before ``noise_scale``.
    s0 : numpy.ndarray
        Mean intensity of the voxel.
    leak : numpy.ndarray
        Motion leakage, percent per mm, (6, n_voxels).
    global_loading : numpy.ndarray
        Weight of the global fluctuation.
    drift_fields : numpy.ndarray
        Spatial variation of each drift cosine, (N_DRIFT_COSINES, n_voxels).
    regions : list of dict
        The regions as placed in this subject, for ``simulation.json``.
    """

    responses: np.ndarray
    contrasts: dict[str, np.ndarray]
    ar1: np.ndarray
    noise_sd: np.ndarray
    s0: np.ndarray
    leak: np.ndarray
    global_loading: np.ndarray
    drift_fields: np.ndarray
    regions: list[dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class RunSignals:
    """Mean signals of a written run, as fMRIPrep computes its confounds.

    Attributes
    ----------
    global_signal, csf, white_matter : numpy.ndarray
        Mean over the run's brain mask, the ventricular and the white-matter
        masks, (n_volumes,) float64.
    temporal_snr : numpy.ndarray
        Temporal SNR of every voxel, (n_voxels,).
    """

    global_signal: np.ndarray
    csf: np.ndarray
    white_matter: np.ndarray
    temporal_snr: np.ndarray


def subject_maps(
    config: SimulationConfig, geometry: Geometry, subject_index: int
) -> SubjectMaps:
    """Per-subject maps: responses, contrasts, AR(1), noise sd, S0, leak, drift."""
    rng = np.random.default_rng([config.seed, 1, subject_index])
    truth = place_regions(config, geometry, rng)
    ar_field, bias_field, global_field, *leak_fields = smooth_field(
        rng, geometry, 12.0, size=3 + 6
    )
    drift_fields = smooth_field(rng, geometry, 25.0, size=N_DRIFT_COSINES)
    ar1 = AR1_CENTRE + AR1_HALF_RANGE * ar_field / np.sqrt(1.0 + ar_field**2)
    thermal = thermal_noise_sd(config.resolution)
    physiological = 0.8 * (0.5 + 0.7 * geometry.gm)
    noise_sd = np.sqrt(physiological**2 + thermal**2)
    s0 = (450.0 + 900.0 * (1.0 - geometry.t1)) * (1.0 + 0.1 * bias_field)
    edge_gain = 1.0 + 2.0 * np.exp(-geometry.edge_distance / 6.0)
    leak = 0.3 * np.asarray(leak_fields) * edge_gain  # percent per mm
    global_loading = 0.8 + 0.2 * global_field
    return SubjectMaps(
        responses=truth.responses,
        contrasts=truth.contrasts,
        ar1=ar1.astype(np.float32),
        noise_sd=noise_sd.astype(np.float32),
        s0=s0.astype(np.float32),
        leak=leak.astype(np.float32),
        global_loading=global_loading.astype(np.float32),
        drift_fields=drift_fields.astype(np.float32),
        regions=truth.placed,
    )


def _cosine_basis(n_volumes: int, n_cosines: int) -> np.ndarray:
    """The first DCT-II components (nilearn's cosine drift), peak 1."""
    return np.array(
        [
            [
                math.cos(math.pi / n_volumes * (t + 0.5) * k)
                for k in range(1, n_cosines + 1)
            ]
            for t in range(n_volumes)
        ]
    )


def _weighted_sum(weights: np.ndarray, maps: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out += sum_k weights[k] * maps[k]``, element-wise for exact repeatability."""
    for weight, values in zip(weights, maps, strict=True):
        if weight != 0.0:
            out += np.float32(weight) * values
    return out


def simulate_run(
    config: SimulationConfig,
    geometry: Geometry,
    maps: SubjectMaps,
    regressors: np.ndarray,
    motion: np.ndarray,
    rng: np.random.Generator,
    dropped_index: np.ndarray,
) -> tuple[np.ndarray, RunSignals]:
    """Generate one run volume by volume.

    Parameters
    ----------
    config : SimulationConfig
        The simulation.
    geometry : Geometry
        The template brain.
    maps : SubjectMaps
        The subject's responses and noise parameters.
    regressors : numpy.ndarray
        Centred task regressors, (n_volumes, n_categories + 1).
    motion : numpy.ndarray
        Rigid-body parameters, (n_volumes, 6).
    rng : numpy.random.Generator
        The run's stream (drift, global fluctuation, noise, in that order).
    dropped_index : numpy.ndarray
        Voxels left out of this run's brain mask (not of the series).

    Returns
    -------
    data : numpy.ndarray
        The 4-D float32 series, Fortran order (so each volume is contiguous and
        nibabel writes it without a copy).
    signals : RunSignals
        The global, csf and white-matter mean signals and the temporal SNR.
    """
    n_volumes = config.n_volumes
    scale = config.noise_scale
    n_cosines = min(N_DRIFT_COSINES, math.floor(2 * n_volumes * config.tr * 0.01))
    cosines = _cosine_basis(n_volumes, N_DRIFT_COSINES)
    drift_global = rng.normal(0.0, 1.0, size=N_DRIFT_COSINES)
    drift_spatial = rng.normal(0.0, 0.5, size=N_DRIFT_COSINES)
    drift_global[n_cosines:] = 0.0
    drift_spatial[n_cosines:] = 0.0
    global_course = np.empty(n_volumes)
    global_innovations = rng.standard_normal(n_volumes)
    global_course[0] = global_innovations[0]
    for t in range(1, n_volumes):
        global_course[t] = (
            GLOBAL_AR1 * global_course[t - 1]
            + math.sqrt(1 - GLOBAL_AR1**2) * global_innovations[t]
        )
    global_course *= GLOBAL_SD
    motion_mm = motion.copy()
    motion_mm[:, 3:] *= HEAD_RADIUS  # rotations as displacement at the cortex
    motion_mm -= motion_mm.mean(axis=0)

    ar1 = maps.ar1
    innovation_gain = np.sqrt(1.0 - ar1 * ar1).astype(np.float32)
    noise_sd = maps.noise_sd * np.float32(scale)
    s0 = maps.s0
    s0_percent = s0 / np.float32(100.0)
    # 3 sigma: the next weight would be 1e-5 of the centre, and 5 taps instead
    # of 7 make the smoothing of every volume a third cheaper
    kernel = gaussian_kernel(NOISE_FWHM_VOXELS * FWHM_TO_SIGMA, truncate=3.0).astype(
        np.float32
    )
    # white noise smoothed by a separable kernel has variance (sum w^2)^3
    renormalise = np.float32(
        1.0 / math.sqrt(math.fsum(float(w) ** 2 for w in kernel) ** 3)
    )
    responses = maps.responses
    leak = maps.leak
    drift_maps = maps.drift_fields
    global_loading = maps.global_loading

    data = np.zeros((*geometry.shape, n_volumes), dtype=np.float32, order="F")
    # positions of the mask voxels (C enumeration) within a Fortran-ordered volume
    flat_index = np.ravel_multi_index(
        np.nonzero(geometry.mask), geometry.shape, order="F"
    )
    global_signal = np.empty(n_volumes)
    csf = np.empty(n_volumes)
    white_matter = np.empty(n_volumes)
    n_vox = responses.shape[1]
    n_kept = n_vox - dropped_index.size
    # deviations from S0 (tens) keep float32 sums of squares exact enough
    total = np.zeros(n_vox, dtype=np.float32)
    total_squares = np.zeros(n_vox, dtype=np.float32)
    box_shape = geometry.bbox_mask.shape
    state = None
    percent = np.empty(n_vox, dtype=np.float32)
    for t in range(n_volumes):
        white = rng.standard_normal(box_shape, dtype=np.float32)
        innovation = smooth(white, kernel)[geometry.bbox_mask]
        innovation *= renormalise
        if state is None:
            state = innovation
        else:
            state *= ar1
            state += innovation_gain * innovation
        percent[:] = 0.0
        _weighted_sum(regressors[t, : responses.shape[0]], responses, percent)
        if scale > 0.0:
            percent += noise_sd * state
            drift_here = cosines[t] * drift_global
            percent += np.float32(scale * drift_here.sum())
            _weighted_sum(scale * cosines[t] * drift_spatial, drift_maps, percent)
            _weighted_sum(scale * motion_mm[t], leak, percent)
            percent += np.float32(scale * global_course[t]) * global_loading
        deviation = s0_percent * percent
        volume_values = s0 + deviation
        data[..., t].ravel(order="K")[flat_index] = volume_values
        total += deviation
        total_squares += deviation * deviation
        brain_sum = volume_values.sum(dtype=np.float64)
        dropped_sum = volume_values[dropped_index].sum(dtype=np.float64)
        global_signal[t] = (brain_sum - dropped_sum) / n_kept
        csf[t] = volume_values[geometry.csf_index].mean(dtype=np.float64)
        white_matter[t] = volume_values[geometry.wm_index].mean(dtype=np.float64)
    mean_deviation = total / np.float32(n_volumes)
    variance = (total_squares / np.float32(n_volumes) - mean_deviation**2) * (
        n_volumes / (n_volumes - 1)
    )
    temporal_snr = (s0 + mean_deviation) / np.sqrt(np.maximum(variance, 1e-12))
    return data, RunSignals(global_signal, csf, white_matter, temporal_snr)
