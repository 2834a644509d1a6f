"""What the reports say about a model and its contrasts, from the maps' sidecars."""

from __future__ import annotations

from dataclasses import dataclass

from laion_fmri_dataloader.dataset import LAIONfMRIDataset
from laion_fmri_dataloader.errors import NotFoundError
from laion_fmri_dataloader.sidecar import MapSidecar

__all__ = [
    "ContrastDescription",
    "contrast_description",
    "metadata",
    "model_rows",
    "software_text",
]


@dataclass(frozen=True)
class ContrastDescription:
    """What a contrast tests, and its non-zero weights in words."""

    text: str
    weights: str


def metadata(dataset: LAIONfMRIDataset, **where: object) -> MapSidecar | None:
    """The sidecar of a map, or None if the map or its sidecar is missing.

    ``where`` are the arguments of :meth:`LAIONfMRIDataset.load_metadata`.
    """
    try:
        return dataset.load_metadata(**where)
    except NotFoundError:
        return None


def contrast_description(
    name: str, sidecar: MapSidecar | None
) -> ContrastDescription | None:
    """The description of contrast ``name`` in a sidecar, if it has one."""
    info = sidecar.Contrasts.get(name) if sidecar else None
    if info is None:
        return None
    weights = ", ".join(
        f"{condition} {weight:+g}"
        for condition, weight in zip(info.Conditions, info.Weights, strict=False)
        if weight
    )
    return ContrastDescription(info.Description, weights)


def model_rows(sidecar: MapSidecar) -> list[tuple[str, object]]:
    """The model's settings as (name, value) pairs."""
    model = sidecar.Model
    return [
        ("Model", model.Type),
        ("HRF", model.HRF),
        ("Drift model", f"{model.DriftModel}, high-pass {model.HighPassFilter:g} Hz"),
        ("Noise model", model.NoiseModel),
        ("Signal scaling", model.SignalScaling),
        (
            "Smoothing",
            f"{model.SmoothingFWHM:g} mm FWHM" if model.SmoothingFWHM else "none",
        ),
    ]


def software_text(sidecar: MapSidecar) -> str:
    """This package (and its container) and the libraries, with versions."""
    ours = sidecar.Software
    parts = [f"{ours.Name} {ours.Version}"] if ours else []
    if ours and ours.Container:
        parts[0] += f" (container {ours.Container})"
    parts += [f"{name} {version}" for name, version in sidecar.Dependencies.items()]
    return ", ".join(parts)
