"""What a corrected map found, scored against the simulator's known truth.

A simulated dataset keeps its true effects in ``derivatives/truth``
(:func:`~laion_fmri_dataloader.simulate.load_truth`); a corrected group map is
scored voxel by voxel against them: hits, misses (of the regions' strong cores
or of their weak tails), false positives and sign errors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from laion_fmri_dataloader.errors import InvalidParameterError, NotFoundError
from laion_fmri_dataloader.simulate import load_truth

__all__ = [
    "STRONG_EFFECT_SHARE",
    "TruthComparison",
    "compare_with_truth",
    "group_truth_on_grid",
]

#: Share of the peak |true effect| from which a true voxel counts as strong.
STRONG_EFFECT_SHARE = 0.5


@dataclass(frozen=True)
class TruthComparison:
    """Voxels a corrected map found, against the true effect's support.

    Attributes
    ----------
    n_true : int
        Voxels of the group mask with a non-zero true effect.
    n_strong : int
        True voxels whose effect is at least :data:`STRONG_EFFECT_SHARE` of
        the largest |true effect|; the cores of the regions, where a test has
        power, as opposed to their weak tails.
    hits : int
        True voxels found with the sign of the true effect.
    strong_hits : int
        Strong true voxels found with the right sign.
    misses : int
        True voxels not found.
    false_positives : int
        Voxels found where the true effect is zero.
    sign_errors : int
        True voxels found with the wrong sign.
    """

    n_true: int
    n_strong: int
    hits: int
    strong_hits: int
    misses: int
    false_positives: int
    sign_errors: int

    @property
    def n_found(self) -> int:
        """Voxels that survive the correction."""
        return self.hits + self.false_positives + self.sign_errors

    @property
    def sensitivity(self) -> float:
        """Share of true voxels found with the right sign (nan if none is true)."""
        return self.hits / self.n_true if self.n_true else float("nan")

    @property
    def strong_sensitivity(self) -> float:
        """Share of strong true voxels found with the right sign."""
        return self.strong_hits / self.n_strong if self.n_strong else float("nan")

    @property
    def false_discovery_proportion(self) -> float:
        """Share of found voxels that are false positives or of the wrong sign."""
        wrong = self.false_positives + self.sign_errors
        return wrong / self.n_found if self.n_found else 0.0


def compare_with_truth(
    corrected: np.ndarray, true_effect: np.ndarray, mask: np.ndarray
) -> tuple[TruthComparison, np.ndarray]:
    """Compare a corrected z map with the true effect, voxel by voxel.

    Parameters
    ----------
    corrected : numpy.ndarray
        Corrected z map: non-zero where a voxel survives.
    true_effect : numpy.ndarray
        True effect on the same grid; non-zero where there is one.
    mask : numpy.ndarray of bool
        Voxels that were tested (the group mask).

    Returns
    -------
    comparison : TruthComparison
        The counts.
    labels : numpy.ndarray of int
        1 hit, 2 miss of a strong true effect, 3 miss in a weak tail, 4 false
        positive or wrong sign, 0 elsewhere.

    Raises
    ------
    InvalidParameterError
        If the three arrays do not have one shape.

    Examples
    --------
    >>> found = np.array([2.0, 0.0, 0.0, 3.0, -4.0])
    >>> truth = np.array([1.0, 1.0, 0.2, 0.0, 0.5])
    >>> comparison, labels = compare_with_truth(found, truth, np.ones(5, bool))
    >>> comparison.hits, comparison.misses, comparison.false_positives
    (1, 2, 1)
    >>> comparison.n_strong, comparison.strong_hits, comparison.sign_errors
    (3, 1, 1)
    >>> labels.tolist()
    [1, 2, 3, 4, 4]
    """
    if corrected.shape != true_effect.shape or corrected.shape != mask.shape:
        raise InvalidParameterError(
            f"corrected map {corrected.shape}, truth {true_effect.shape} and mask "
            f"{mask.shape} must have one shape"
        )
    mask = mask.astype(bool)
    found = (corrected != 0) & mask
    true = (true_effect != 0) & mask
    peak = float(np.abs(true_effect[true]).max()) if true.any() else 0.0
    strong = true & (np.abs(true_effect) >= STRONG_EFFECT_SHARE * peak)
    right_sign = np.sign(corrected) == np.sign(true_effect)
    hit = found & true & right_sign
    sign_error = found & true & ~right_sign
    miss = true & ~found
    false_positive = found & ~true
    labels = np.zeros(corrected.shape, dtype=np.int16)
    labels[hit] = 1
    labels[miss & strong] = 2
    labels[miss & ~strong] = 3
    labels[false_positive | sign_error] = 4
    comparison = TruthComparison(
        n_true=int(true.sum()),
        n_strong=int(strong.sum()),
        hits=int(hit.sum()),
        strong_hits=int((hit & strong).sum()),
        misses=int(miss.sum()),
        false_positives=int(false_positive.sum()),
        sign_errors=int(sign_error.sum()),
    )
    return comparison, labels


def group_truth_on_grid(
    dataset_dir: str | os.PathLike[str],
    contrast: str,
    reference: nib.Nifti1Image,
    *,
    task: str = "experiment",
) -> np.ndarray | None:
    """The group's true effect on the grid of ``reference``, or None if unknown.

    Parameters
    ----------
    dataset_dir : str or path-like
        The simulated BIDS dataset (which holds ``derivatives/truth``).
    contrast : str
        Contrast name.
    reference : nibabel.Nifti1Image
        A map of the analysis; the truth is resampled to its grid (nearest
        neighbour) when the grids differ.
    task : str
        Task label.

    Returns
    -------
    numpy.ndarray or None
        The true effect (percent signal change, float64), None if the dataset
        has no truth for ``contrast``.
    """
    try:
        effect, _ = load_truth(dataset_dir, "group", contrast, task=task)
    except NotFoundError:
        return None
    if effect.shape[:3] != reference.shape[:3] or not np.allclose(
        effect.affine, reference.affine, atol=1e-3
    ):
        from nilearn.image import resample_to_img

        effect = resample_to_img(
            effect,
            reference,
            interpolation="nearest",
            force_resample=True,
            copy_header=True,
        )
    return np.asanyarray(effect.dataobj).astype(np.float64)
