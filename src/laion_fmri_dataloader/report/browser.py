"""How the reports are opened in headless Chromium (tests, documentation figures)."""

from __future__ import annotations

__all__ = ["HEADLESS_CHROMIUM_FLAGS"]

#: Flags to open a report in headless Chromium offline, as root, with a fresh
#: ``--user-data-dir``: without the networking flags Chromium tries to reach
#: Google's hosts at start-up.
HEADLESS_CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
