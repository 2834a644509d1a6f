"""The brain the data are simulated in: grid, mask, tissue maps, smooth fields.

The grid, brain mask, T1 intensity and grey/white-matter probability maps are
nilearn's bundled MNI152 2009 template (no download), resampled to the asked
resolution.  Arrays in, arrays out: voxels are a vector in the C order of the
mask, as ``volume[mask]`` gives them.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = [
    "FWHM_TO_SIGMA",
    "NOISE_FWHM_VOXELS",
    "Geometry",
    "gaussian_kernel",
    "make_geometry",
    "smooth",
    "smooth_field",
]

#: Spatial smoothness (FWHM, voxels) of the noise innovations; the grid box of
#: :class:`Geometry` keeps a margin for their kernel.
NOISE_FWHM_VOXELS = 1.5
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


@dataclasses.dataclass
class Geometry:
    """The template brain on the simulation's grid.

    Attributes
    ----------
    affine : numpy.ndarray
        Voxel to MNI mm, (4, 4).
    shape : tuple of int
        Grid shape.
    mask : numpy.ndarray
        Brain mask, bool, grid shape.
    coords : numpy.ndarray
        MNI coordinates of the mask's voxels in mm, (n_voxels, 3).
    t1, gm, wm : numpy.ndarray
        T1 intensity in [0, 1] and grey/white-matter probabilities, (n_voxels,).
    edge_distance : numpy.ndarray
        Distance to the outside of the mask in mm, (n_voxels,).
    csf_index, wm_index : numpy.ndarray
        Voxels (indices into the voxel vector) of the ventricular and the
        eroded white-matter masks of the confounds.
    edge_index : numpy.ndarray
        Voxels on the mask's boundary.
    bbox : tuple of slice
        Grid box holding the mask plus a margin for the noise kernel.
    bbox_mask : numpy.ndarray
        The mask within the box.
    """

    affine: np.ndarray
    shape: tuple[int, int, int]
    mask: np.ndarray
    coords: np.ndarray
    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    edge_distance: np.ndarray
    csf_index: np.ndarray
    wm_index: np.ndarray
    edge_index: np.ndarray
    bbox: tuple[slice, slice, slice]
    bbox_mask: np.ndarray

    @property
    def resolution(self) -> float:
        """Voxel size in mm."""
        return float(abs(self.affine[0, 0]))


def _load_templates(resolution: float) -> dict[str, nib.Nifti1Image]:
    from nilearn import datasets
    from nilearn.image import resample_img

    loaders = {
        "mask": datasets.load_mni152_brain_mask,
        "t1": datasets.load_mni152_template,
        "gm": datasets.load_mni152_gm_template,
        "wm": datasets.load_mni152_wm_template,
    }
    if float(resolution).is_integer():
        return {key: load(resolution=int(resolution)) for key, load in loaders.items()}
    # nilearn resamples only to whole millimetres; other sizes resample here
    images = {key: load() for key, load in loaders.items()}
    source = images["mask"]
    extent = np.array(source.shape) * np.abs(np.diag(source.affine)[:3])
    target_shape = tuple(int(n) for n in np.ceil(extent / resolution))
    target_affine = source.affine.copy()
    target_affine[:3, :3] = np.diag(np.sign(np.diag(source.affine)[:3]) * resolution)
    return {
        key: resample_img(
            image,
            target_affine=target_affine,
            target_shape=target_shape,
            interpolation="nearest" if key == "mask" else "continuous",
            force_resample=True,
            copy_header=True,
        )
        for key, image in images.items()
    }


@functools.lru_cache(maxsize=2)
def make_geometry(resolution: float) -> Geometry:
    """The template brain at ``resolution`` mm (cached: the arrays are read only).

    Loading and resampling the templates takes about a second.
    """
    images = _load_templates(resolution)
    mask = np.asarray(images["mask"].dataobj) > 0
    affine = images["mask"].affine.copy()
    ijk = np.argwhere(mask)  # C order, the same as mask indexing
    coords = ijk @ affine[:3, :3].T + affine[:3, 3]

    def _values(key: str) -> np.ndarray:
        data = np.asarray(images[key].dataobj, dtype=np.float64)
        data = data / max(float(data.max()), 1e-12)
        return np.clip(data[mask], 0.0, 1.0)

    t1, gm, wm = _values("t1"), _values("gm"), _values("wm")
    edge_distance = ndimage.distance_transform_edt(mask)[mask] * resolution
    # ventricles: neither grey nor white matter, well inside the brain
    csf_index = np.flatnonzero((gm < 0.2) & (wm < 0.2) & (edge_distance > 20.0))
    if csf_index.size < 5:
        csf_index = np.argsort(t1 + (edge_distance < 20.0), kind="stable")[:20]
    wm_core = wm > 0.9
    eroded = np.zeros(mask.shape, dtype=bool)
    eroded[mask] = wm_core
    eroded = ndimage.binary_erosion(eroded)[mask]
    wm_index = np.flatnonzero(eroded if eroded.sum() >= 20 else wm_core)
    boundary = mask & ~ndimage.binary_erosion(mask)
    edge_index = np.flatnonzero(boundary[mask])
    margin = math.ceil(4 * NOISE_FWHM_VOXELS * FWHM_TO_SIGMA) + 1
    lower = np.maximum(ijk.min(axis=0) - margin, 0)
    upper = np.minimum(ijk.max(axis=0) + margin + 1, mask.shape)
    bbox = tuple(slice(int(a), int(b)) for a, b in zip(lower, upper, strict=True))
    return Geometry(
        affine=affine,
        shape=mask.shape,
        mask=mask,
        coords=coords,
        t1=t1,
        gm=gm,
        wm=wm,
        edge_distance=edge_distance,
        csf_index=csf_index,
        wm_index=wm_index,
        edge_index=edge_index,
        bbox=bbox,
        bbox_mask=mask[bbox],
    )


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Return a normalised 1-D Gaussian kernel (sigma in voxels)."""
    # math.exp keeps the weights identical on every CPU (no SIMD variants)
    radius = max(math.ceil(truncate * sigma), 1)
    weights = [math.exp(-0.5 * (i / sigma) ** 2) for i in range(-radius, radius + 1)]
    total = math.fsum(weights)
    return np.array([w / total for w in weights], dtype=np.float64)


def smooth(volume: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable smoothing of ``volume`` by ``kernel`` along every axis."""
    for axis in range(volume.ndim):
        volume = ndimage.correlate1d(volume, kernel, axis=axis, mode="reflect")
    return volume


def smooth_field(
    rng: np.random.Generator, geometry: Geometry, sigma_mm: float, size: int = 1
) -> np.ndarray:
    """Draw smooth Gaussian random fields, unit sd over the mask, (size, n_vox)."""
    kernel = gaussian_kernel(sigma_mm / geometry.resolution)
    box_shape = geometry.bbox_mask.shape
    fields = np.empty((size, int(geometry.mask.sum())), dtype=np.float64)
    for index in range(size):
        white = rng.standard_normal(box_shape)
        values = smooth(white, kernel)[geometry.bbox_mask]
        values = values - values.mean()
        fields[index] = values / max(float(values.std()), 1e-12)
    return fields
