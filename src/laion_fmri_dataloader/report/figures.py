"""The reports' figures, as PNG data URIs: glass brains and truth overlays.

Figures are made without pyplot (a :class:`matplotlib.figure.Figure` needs no
GUI backend and is freed with its last reference), so reports can be written
from any thread.
"""

from __future__ import annotations

import base64
import functools
import io
import threading
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import nibabel as nib
import numpy as np

__all__ = [
    "Figure",
    "GlassBrains",
    "cut_coords",
    "glass_brains",
    "png_uri",
    "truth_overlay",
]

_DPI = 80
_Z_COLOURMAP = "RdBu_r"
#: Colours of the truth overlay, by label value 1, 2, 3, 4.
_OVERLAY_COLOURS = {
    "hit": "#1a9850",
    "miss (strong true effect)": "#2c7bb6",
    "miss (weak tail)": "#abd9e9",
    "false positive or wrong sign": "#d7191c",
}


class Figure(NamedTuple):
    """An image of a report: a PNG data URI and its alternative text."""

    uri: str
    alt: str


def png_uri(payload: bytes) -> str:
    """A ``data:image/png;base64,...`` URI of PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(payload).decode("ascii")


def _figure_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, facecolor="white")
    return png_uri(buffer.getvalue())


class GlassBrains:
    """Glass brains (left, top, right views) of signed z maps, on one outline.

    nilearn draws the brain outline from hundreds of patches per view, which
    is most of a figure's cost; a report draws many maps, so the outline is
    drawn once and each map is added, saved and taken off again.  The views'
    limits are put back too, so the PNG is the same as a figure of its own
    whatever was drawn before.
    """

    def __init__(self) -> None:
        from matplotlib.figure import Figure as MatplotlibFigure
        from nilearn import plotting

        self.figure = MatplotlibFigure(figsize=(9.0, 2.9))
        self.display = plotting.plot_glass_brain(
            None,
            display_mode="lzr",
            plot_abs=False,
            colorbar=False,
            figure=self.figure,
            axes=(0.0, 0.0, 0.9, 0.9),
        )
        self._views = list(self.display.axes.values())
        self._axes = [view.ax for view in self._views]
        # nilearn widens a view to the union of the extents of everything it
        # has drawn (its ``_object_bounds``), so without this a map would be
        # drawn smaller after a map that reached further out.
        self._outline = [
            (list(view._object_bounds), view.ax.axis()) for view in self._views
        ]

    def render(
        self, image: nib.Nifti1Image, title: str, threshold: float | None
    ) -> str:
        """PNG data URI of ``image`` drawn where ``|z| > threshold``.

        Parameters
        ----------
        image : nibabel.Nifti1Image
            The z map.
        title : str
            Figure title.
        threshold : float or None
            |z| at or below which nothing is drawn; None draws every non-zero
            voxel.
        """
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        data = np.asanyarray(image.dataobj)
        peak = float(np.nanmax(np.abs(data))) if data.size else 0.0
        cut = threshold or 0.0
        shown = peak > cut
        vmax = float(np.ceil(max(peak, cut + 1.0)))
        before = [set(axes.get_children()) for axes in self._axes]
        added = [
            self.figure.suptitle(
                title if shown else f"{title}: nothing above threshold",
                x=0.02,
                y=0.98,
                ha="left",
                fontsize=11,
            )
        ]
        if shown:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.display.add_overlay(
                    image,
                    threshold=threshold or 1e-6,
                    cmap=_Z_COLOURMAP,
                    vmin=-vmax,
                    vmax=vmax,
                )
            # matplotlib's own colour bar costs a tenth of nilearn's; the grey
            # band marks the |z| range that is not drawn.
            bar_axes = self.figure.add_axes((0.92, 0.1, 0.018, 0.75))
            bar = self.figure.colorbar(
                ScalarMappable(Normalize(-vmax, vmax), _Z_COLOURMAP), cax=bar_axes
            )
            if cut:
                bar_axes.axhspan(-cut, cut, color="#d9d9d9")
            ticks = sorted({-vmax, vmax, *((-cut, cut) if cut else (0.0,))})
            bar.set_ticks(ticks, labels=[f"{tick:.3g}" for tick in ticks])
            bar.ax.tick_params(labelsize=8)
            bar_axes.set_title("z", fontsize=9)
            added.append(bar_axes)
        uri = _figure_uri(self.figure)
        for axes, artists in zip(self._axes, before, strict=True):
            for artist in set(axes.get_children()) - artists:
                artist.remove()
        for artist in added:
            artist.remove()
        for view, (bounds, limits) in zip(self._views, self._outline, strict=True):
            view._object_bounds[:] = bounds
            view.ax.axis(limits)
        return uri


_PER_THREAD = threading.local()


def glass_brains() -> GlassBrains:
    """This thread's glass-brain figure, so the outline is drawn once per thread."""
    if not hasattr(_PER_THREAD, "glass_brains"):
        _PER_THREAD.glass_brains = GlassBrains()
    return _PER_THREAD.glass_brains


@functools.cache
def _template() -> nib.Nifti1Image:
    """The MNI152 template shipped with nilearn (loaded once per process)."""
    from nilearn import datasets

    return datasets.load_mni152_template(resolution=2)


def cut_coords(labels: np.ndarray, affine: np.ndarray, count: int = 6) -> list[float]:
    """Axial slices (mm) with the most hits, strong misses and false positives.

    Weak tails are left out of the choice: they cover much of the brain and
    would pull the slices away from where the test succeeds or fails.

    Parameters
    ----------
    labels : numpy.ndarray of int
        Labels of :func:`~laion_fmri_dataloader.simulate.scoring.compare_with_truth`.
    affine : numpy.ndarray
        Their voxel-to-mm affine.
    count : int
        Slices wanted, at least two voxels apart.
    """
    telling = np.isin(labels, (1, 2, 4))
    if not telling.any():
        telling = labels > 0
    per_slice = telling.sum(axis=(0, 1))
    chosen: list[int] = []
    for index in np.argsort(-per_slice, kind="stable"):
        if per_slice[index] == 0 or len(chosen) == count:
            break
        if all(abs(int(index) - other) >= 2 for other in chosen):
            chosen.append(int(index))
    if not chosen:
        chosen = [labels.shape[2] // 2]
    return [float(affine[2, 2] * k + affine[2, 3]) for k in sorted(chosen)]


def truth_overlay(
    labels: np.ndarray, affine: np.ndarray, title: str, slices: Sequence[float]
) -> str:
    """PNG data URI: axial slices of hits, misses and false positives on MNI152.

    Parameters
    ----------
    labels : numpy.ndarray of int
        Labels of :func:`~laion_fmri_dataloader.simulate.scoring.compare_with_truth`.
    affine : numpy.ndarray
        Their voxel-to-mm affine.
    title : str
        Figure title.
    slices : sequence of float
        z coordinates of the slices, mm.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure as MatplotlibFigure
    from matplotlib.patches import Patch
    from nilearn import plotting

    figure = MatplotlibFigure(figsize=(9.5, 2.4))
    label_image = nib.Nifti1Image(labels.astype(np.int16), affine)
    colours = list(_OVERLAY_COLOURS.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plotting.plot_roi(
            label_image,
            bg_img=_template(),
            display_mode="z",
            cut_coords=list(slices),
            cmap=ListedColormap(colours),
            vmin=0.5,
            vmax=len(colours) + 0.5,
            alpha=0.9,
            figure=figure,
            axes=(0.0, 0.1, 1.0, 0.8),
            colorbar=False,
            draw_cross=False,
            black_bg=False,
            annotate=True,
        )
    figure.suptitle(title, x=0.01, y=0.99, ha="left", fontsize=11)
    handles = [
        Patch(facecolor=colour, label=name) for name, colour in _OVERLAY_COLOURS.items()
    ]
    figure.legend(
        handles=handles,
        loc="lower center",
        ncol=len(handles),
        frameon=False,
        fontsize=9,
        bbox_to_anchor=(0.5, 0.0),
    )
    return _figure_uri(figure)
