"""The reports' Jinja2 templates, and the filters that format values in them.

Templates are in ``report/templates``: ``base.html.jinja`` (the page and its
style sheet ``report.css``), ``macros.html.jinja`` (sections, tables, images)
and one template per page.  Every value is escaped unless it is marked safe.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jinja2
import numpy as np

from laion_fmri_dataloader._version import __version__

__all__ = ["Link", "format_number", "get_template", "is_number"]


class Link(NamedTuple):
    """A link, for a table cell or the navigation bar."""

    href: str
    label: str


def format_number(value: object, digits: int = 3) -> str:
    """A value as a table shows it: numbers to ``digits`` significant digits.

    Examples
    --------
    >>> [format_number(v) for v in (None, float("nan"), True, 7, 3.14159, "ar1")]
    ['–', '–', 'yes', '7', '3.14', 'ar1']
    """
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}g}"
    return str(value)


def is_number(value: object) -> bool:
    """Whether a table cell holds a number (drawn right-aligned)."""
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


@functools.cache
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("laion_fmri_dataloader.report", "templates"),
        # HTML templates escape every value; the style sheet is text.
        autoescape=jinja2.select_autoescape(["html.jinja"], default=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["number"] = format_number
    environment.tests["number"] = is_number
    environment.tests["link"] = lambda value: isinstance(value, Link)
    environment.globals["version"] = __version__
    return environment


def get_template(name: str) -> jinja2.Template:
    """A report template by file name, e.g. ``"subject.html.jinja"``."""
    return _environment().get_template(name)
