"""HTML reports of the GLM derivatives: one per subject, one for the group, an index.

The reports are what a scientist opens first: per subject the design matrices,
every contrast's z map as a glass brain with its table of peaks, the model,
the runs used and warnings (head motion, voxels left out); for the group the
uncorrected, FDR- and FWE-corrected maps, their cluster tables and the
thresholds from the sidecars and, on simulated data, what the corrected maps
found against the known truth.

Each report is one self-contained HTML file: images are embedded as base64 PNG
data URIs and the style sheet is inline, so a report opens offline and can be
mailed.  They are written to ``<glm_dir>/reports/``: ``index.html``,
``group.html`` and ``sub-<label>.html``.  A report newer than every file it
is made from is not made again.

Everything a report shows is read through
:class:`~laion_fmri_dataloader.LAIONfMRIDataset`, so the derivatives may be in
a local folder or an object store (``s3://...``, with a local ``output_dir``).

Modules: :mod:`.templates` (Jinja2 templates and their filters),
:mod:`.figures`, :mod:`.clusters`, :mod:`.model` (sidecars in words),
:mod:`.paths` (where reports go, freshness), one module per page
(:mod:`.subject`, :mod:`.group` with :mod:`.truth`, :mod:`.index`) and
:mod:`.browser` (headless Chromium flags).
"""

from laion_fmri_dataloader.report.browser import HEADLESS_CHROMIUM_FLAGS
from laion_fmri_dataloader.report.clusters import (
    MAX_CLUSTERS,
    MAX_TABLE_ROWS,
    PEAK_Z_THRESHOLD,
)
from laion_fmri_dataloader.report.group import NULL_CALIBRATION_NOTE, write_group_report
from laion_fmri_dataloader.report.index import write_index, write_reports
from laion_fmri_dataloader.report.paths import REPORTS_DIR, report_path
from laion_fmri_dataloader.report.subject import write_subject_report

__all__ = [
    "HEADLESS_CHROMIUM_FLAGS",
    "MAX_CLUSTERS",
    "MAX_TABLE_ROWS",
    "NULL_CALIBRATION_NOTE",
    "PEAK_Z_THRESHOLD",
    "REPORTS_DIR",
    "report_path",
    "write_group_report",
    "write_index",
    "write_reports",
    "write_subject_report",
]
