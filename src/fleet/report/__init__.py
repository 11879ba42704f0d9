"""Reports of runs: what happened to each model, read from the run's state files.

    statefiles.py  several state files (the shards of a run) read as one
    model.py       the report as data: `build_report`, `RunReport`, comparison with a run before
    text.py        Markdown, JUnit XML and JSON renderings, and what the renderings share
    html.py        the self-contained HTML page
    status.py      `fleet status`: the document, its terminal view, the live progress table

`render` is the one way out: it picks the rendering and scrubs secrets from the text.
"""

from __future__ import annotations

import json

from fleet.report.html import html_report
from fleet.report.model import FORMATS, Format, RunReport, build_report
from fleet.report.text import junit, markdown, plain
from fleet.secrets import redactor

__all__ = ["FORMATS", "Format", "RunReport", "build_report", "render"]


def render(report: RunReport, fmt: Format) -> str:
    """The report as text in one of `FORMATS`, without a secret in it (the store takes them
    out as it writes; a file written before it did may still hold the patterns)."""
    return redactor.scrub(_rendered(report, fmt))


def _rendered(report: RunReport, fmt: Format) -> str:
    if fmt == "md":
        return markdown(report)
    if fmt == "json":
        return json.dumps(plain(report), indent=2) + "\n"
    if fmt == "junit":
        return junit(report)
    if fmt == "html":
        return html_report(report)
    raise ValueError(f"unknown report format {fmt!r}; choose one of {', '.join(FORMATS)}")
