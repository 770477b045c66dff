"""
The minimal page of one preview, `<public_url>/previews/{id}`, and its logs,
`/previews/{id}/logs`: where a pull request comment's links lead (behind the
login) until the dashboard work gives previews a richer page.

Plain HTML, no scripts, no external assets; every value escaped; log lines
masked (`prevu.masking`) before they are shown. The control app mounts it
(see `PreviewPage`'s docstring).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from attrs import define

from prevu.errors import RequestRefused
from prevu.masking import Masker
from prevu.ports import Store

PAGE_LINES = 200
LOG_LINES = 5000

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{id} · prevu</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:60em}}
pre{{background:#f4f4f4;padding:1em;overflow:auto;font-size:85%}}
th{{text-align:left;padding-right:1em}}</style></head>
<body><h1>{id}</h1>
<table>
<tr><th>Status</th><td>{status}</td></tr>
<tr><th>Preview</th><td><a href="{url}">{url}</a></td></tr>
<tr><th>Pull request</th><td>{repo}#{number} ({branch})</td></tr>
<tr><th>Commit</th><td><code>{sha}</code></td></tr>
{reason}</table>
<h2 id="logs">Last log lines</h2>
<p><a href="/previews/{id}/logs">all logs</a></p>
<pre>{lines}</pre>
</body></html>
"""


def _html_headers(request: Any) -> None:
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'")


@define
class PreviewPage:
    """
    One preview's page and logs from the store, mounted by the control app at
    `/previews/{id}` and `/previews/{id}/logs` behind the reviewer login; a
    preview the reviewer may not see is answered as one that does not exist.
    """

    store: Store
    mask: Masker = lambda line: line

    def _record(self, preview: str, visible: Callable[[str], bool] | None) -> Any:
        record = self.store.get(preview)
        # A preview the reviewer may not see is answered as one that does not exist.
        if record is None or (visible is not None and not visible(record.repo)):
            raise RequestRefused("not_found", f"no preview {preview!r}")
        return record

    def _tail(self, preview: str, count: int) -> list[str]:
        lines: list[str] = []
        after = 0
        while True:
            page = self.store.read_logs(preview, after=after, limit=5000)
            if not page:
                return lines
            lines = (lines + [self.mask(entry.line) for entry in page])[-count:]
            after = page[-1].seq

    def page(
        self, request: Any, preview: str, visible: Callable[[str], bool] | None = None
    ) -> bytes:
        """The HTML page of `preview`. :raises RequestRefused: not_found (unknown, not visible)."""
        record = self._record(preview, visible)
        e = html.escape
        reason = ""
        if record.error:
            reason = f"<tr><th>Reason</th><td>{e(self.mask(record.error))}</td></tr>\n"
        _html_headers(request)
        return PAGE.format(
            id=e(record.id),
            status=e(record.status),
            url=e(record.url),
            repo=e(record.repo),
            number=record.number,
            branch=e(record.branch),
            sha=e(record.sha[:12]),
            reason=reason,
            lines=e("\n".join(self._tail(preview, PAGE_LINES))),
        ).encode()

    def logs(
        self, request: Any, preview: str, visible: Callable[[str], bool] | None = None
    ) -> bytes:
        """The last log lines of `preview` as plain text. :raises RequestRefused: not_found."""
        self._record(preview, visible)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return ("\n".join(self._tail(preview, LOG_LINES)) + "\n").encode()
