"""The localizer's contrasts: six standard ones and user contrasts by expression.

Weights are defined over the conditions ``face``, ``scene``, ``object`` and
``baseline`` (the fixation blocks, modelled as their own regressor).  When a
dataset has no ``baseline`` trial type, the implicit baseline (everything not
modelled) takes its place: the ``baseline`` weight is dropped and the sidecar says
so.  User contrasts are linear expressions over condition names, parsed without
``eval``.

Examples
--------
>>> STANDARD_CONTRASTS["faceVsScene"].weights
{'face': 1.0, 'scene': -1.0, 'object': 0.0, 'baseline': 0.0}
>>> parse_contrast("faceVsAll=face - 0.5*scene - 0.5*object").weights
{'face': 1.0, 'scene': -0.5, 'object': -0.5}
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from laion_fmri_dataloader.errors import InputError, InvalidLabelError
from laion_fmri_dataloader.layout import validate_label

__all__ = [
    "CONDITIONS",
    "STANDARD_CONTRASTS",
    "Contrast",
    "contrast_vector",
    "order_contrast_names",
    "parse_contrast",
]

#: The localizer's conditions, in the order the standard weights use.
CONDITIONS = ("face", "scene", "object", "baseline")


@dataclass(frozen=True)
class Contrast:
    """A named linear contrast over conditions.

    Attributes
    ----------
    name : str
        BIDS label of the contrast (``faceVsBaseline``).
    description : str
        What the contrast tests, in words.
    weights : dict of str to float
        Weight of each condition; conditions not named weigh 0.
    """

    name: str
    description: str
    weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_label(self.name, "contrast")

    @property
    def conditions(self) -> list[str]:
        """Conditions with a non-zero weight."""
        return [name for name, weight in self.weights.items() if weight != 0]


def _standard(name: str, description: str, weights: Sequence[float]) -> Contrast:
    return Contrast(
        name, description, dict(zip(CONDITIONS, map(float, weights), strict=True))
    )


#: The six standard contrasts, in the order users see them.
STANDARD_CONTRASTS: dict[str, Contrast] = {
    contrast.name: contrast
    for contrast in (
        _standard("faceVsBaseline", "Faces versus fixation baseline", [1, 0, 0, -1]),
        _standard("sceneVsBaseline", "Scenes versus fixation baseline", [0, 1, 0, -1]),
        _standard(
            "objectVsBaseline", "Objects versus fixation baseline", [0, 0, 1, -1]
        ),
        _standard("faceVsScene", "Faces versus scenes", [1, -1, 0, 0]),
        _standard("faceVsObject", "Faces versus objects", [1, 0, -1, 0]),
        _standard("sceneVsObject", "Scenes versus objects", [0, 1, -1, 0]),
    )
}


def order_contrast_names(names: Iterable[str]) -> list[str]:
    """Order contrast names: the standard ones first in their order, then the rest.

    Examples
    --------
    >>> order_contrast_names(["zeta", "faceVsScene", "faceVsBaseline", "alpha"])
    ['faceVsBaseline', 'faceVsScene', 'alpha', 'zeta']
    """
    names = set(names)
    standard = [name for name in STANDARD_CONTRASTS if name in names]
    return standard + sorted(names - set(standard))


def _linear_terms(node: ast.AST, expression: str) -> dict[str, float]:
    """Weights of a linear expression tree, by condition name."""
    if isinstance(node, ast.Name):
        return {node.id: 1.0}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        sign = -1.0 if isinstance(node.op, ast.USub) else 1.0
        return {k: sign * v for k, v in _linear_terms(node.operand, expression).items()}
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub):
        left = _linear_terms(node.left, expression)
        sign = -1.0 if isinstance(node.op, ast.Sub) else 1.0
        for key, value in _linear_terms(node.right, expression).items():
            left[key] = left.get(key, 0.0) + sign * value
        return left
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult | ast.Div):
        factor = _constant(node.right)
        if factor is not None:
            terms = _linear_terms(node.left, expression)
            scale = 1.0 / factor if isinstance(node.op, ast.Div) else factor
            return {k: v * scale for k, v in terms.items()}
        factor = _constant(node.left)
        if factor is not None and isinstance(node.op, ast.Mult):
            return {
                k: v * factor for k, v in _linear_terms(node.right, expression).items()
            }
    raise InvalidLabelError(
        f"contrast expression {expression!r} is not a linear combination of "
        "condition names (example: 'face - 0.5*scene - 0.5*object')"
    )


def _constant(node: ast.AST) -> float | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _constant(node.operand)
        return None if value is None else -value
    return None


def parse_contrast(definition: str, description: str | None = None) -> Contrast:
    """Parse a user contrast ``"name=expression"``.

    Parameters
    ----------
    definition : str
        ``"faceVsAll=face - 0.5*scene - 0.5*object"``.
    description : str, optional
        Defaults to the expression itself.

    Raises
    ------
    InvalidLabelError
        If the definition has no ``=``, the name is not a BIDS label or the
        expression is not linear in condition names.
    """
    name, sep, expression = definition.partition("=")
    name, expression = name.strip(), expression.strip()
    if not sep or not expression:
        raise InvalidLabelError(
            f"contrast {definition!r} must look like 'name=expression', "
            "e.g. 'faceVsAll=face - 0.5*scene - 0.5*object'"
        )
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as error:
        raise InvalidLabelError(
            f"contrast expression {expression!r} cannot be parsed: {error.msg}"
        ) from None
    weights = _linear_terms(tree.body, expression)
    return Contrast(
        validate_label(name, "contrast"), description or expression, weights
    )


def contrast_vector(
    contrast: Contrast, columns: Sequence[str], *, implicit_baseline: bool = False
) -> np.ndarray:
    """Weights of ``contrast`` over design-matrix ``columns``.

    Parameters
    ----------
    contrast : Contrast
        The contrast.
    columns : sequence of str
        Names of the design matrix's columns.
    implicit_baseline : bool
        If True, a ``baseline`` weight is dropped because the baseline is what
        the model leaves unmodelled.

    Raises
    ------
    InputError
        If a condition with a non-zero weight has no column.
    """
    vector = np.zeros(len(columns))
    index = {name: position for position, name in enumerate(columns)}
    for condition, weight in contrast.weights.items():
        if weight == 0 or (implicit_baseline and condition == "baseline"):
            continue
        if condition not in index:
            raise InputError(
                f"contrast {contrast.name} needs condition '{condition}', which has "
                f"no regressor; design columns: {', '.join(columns)}"
            )
        vector[index[condition]] = weight
    return vector
