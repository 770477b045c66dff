"""
The sticky pull request comment: its Markdown and its hidden marker (pure).

One comment per pull request, found again after a restart by the marker
`<!-- prevu:preview <forge>:<repo>#<n> -->`, and only among comments written
by prevu's own identity (a marker copied by someone else is never edited).
"""

from __future__ import annotations

from collections.abc import Sequence

from attrs import frozen

from prevu.feedback.view import View

_TITLES = {
    "queued": "⏳ Preview queued",
    "building": "🔨 Building the preview",
    "running": "✅ Preview ready",
    "failed": "❌ Preview failed",
    "held": "⚠️ New commit not deployed",
    "superseded": "⏭️ Preview superseded",
    "awaiting": "✋ Preview awaits approval",
    "expired": "💤 Preview expired",
    "removed": "🗑️ Preview removed",
}


def marker(forge: str, repo: str, number: int) -> str:
    """The hidden marker that names a pull request's sticky comment."""
    return f"<!-- prevu:preview {forge}:{repo.lower()}#{number} -->"


@frozen
class Links:
    """Where the comment points: the preview's page and logs on the control host."""

    page: str
    logs: str

    @classmethod
    def for_preview(cls, public_url: str, preview: str) -> Links:
        """`<public_url>/previews/{id}` and its logs (behind the login)."""
        page = f"{public_url.rstrip('/')}/previews/{preview}"
        return cls(page=page, logs=f"{page}/logs")


def _duration(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 60}m {whole % 60:02d}s" if whole >= 60 else f"{whole}s"


def render(
    view: View | None,
    links: Links,
    mark: str,
    log_tail: Sequence[str] | None = None,
    replies: Sequence[str] = (),
) -> str:
    """
    The comment's Markdown for `view`. `log_tail` (already masked) is shown on
    failure (and for a "held" commit, whose `on_push` failed) when given;
    otherwise the logs link stands in for it. A "held" view says the commit
    was not deployed, why, and which commit the preview still serves. `replies`,
    the answers to the last `/preview` commands, close it; with no view (a
    command on a pull request without a preview) they are all it shows.
    """
    if view is None:
        return "\n".join([mark, "### prevu", "", *_replies(replies)]).rstrip() + "\n"
    lines = [mark, f"### {_TITLES[view.state]}", ""]
    rows = [("Commit", f"`{view.short}`")]
    if view.state == "running":
        rows.insert(0, ("Preview", f"[{view.url}]({view.url})"))
    if view.state == "held":
        serves = f" (serving `{view.serving[:7]}`)" if view.serving else ""
        rows = [
            ("Preview", f"[{view.url}]({view.url}){serves}"),
            ("Commit", f"`{view.short}` (not deployed)"),
        ]
    if view.duration is not None and view.state == "running":
        rows.append(("Build", _duration(view.duration)))
    rows.append(("Details", f"[page]({links.page}) · [logs]({links.logs})"))
    lines += ["| | |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows]
    lines.append("")
    if view.superseded:
        lines.append(f"Supersedes the build of `{view.superseded[:7]}` (by `{view.short}`).")
    if view.state == "awaiting":
        lines.append(
            "This pull request comes from a fork. A maintainer may start its preview by"
            f" commenting `/preview approve {view.short}`."
        )
    if view.state == "held":
        still = f"`{view.serving[:7]}`" if view.serving else "the previous commit"
        lines.append(
            f"`{view.short}` was **not deployed**: its `on_push` command failed, so the"
            f" preview keeps serving {still}. Push a fix, or comment `/preview redeploy`"
            " to try again."
        )
        lines.append("")
    if view.state in ("failed", "held"):
        lines.append(f"**Reason:** {_inline(view.reason or 'unknown')}")
        if log_tail:
            lines += ["", "<details><summary>Last log lines</summary>", "", "```"]
            lines += [line.replace("```", "'''") for line in log_tail]
            lines += ["```", "</details>"]
        else:
            lines.append(f"See the [logs]({links.logs}).")
    if view.state in ("removed", "expired"):
        reason = f" ({_inline(view.reason)})" if view.reason else ""
        lines.append(f"The preview was removed{reason}.")
    lines += _replies(replies)
    return "\n".join(lines).rstrip() + "\n"


def _replies(replies: Sequence[str]) -> list[str]:
    if not replies:
        return []
    return (
        ["", "<details open><summary>Commands</summary>", ""]
        + [f"- {_inline(reply)}" for reply in replies]
        + ["</details>"]
    )


def _inline(text: str) -> str:
    # One line, no Markdown surprises from a build's error text.
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;")
