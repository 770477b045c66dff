"""
`prevu ls`, `up`, `logs`, `redeploy`, `destroy` and `why`: the CLI side of the API.

`up`, `redeploy` and `logs -f` watch the preview until it settles
(`prevu.watch`); errors are `ClientError`s printed as one `error:` line
(exit status 1) that says what to do where prevu can tell.

These talk to the control app's API (SPEC §4) with the bearer `api_token`.
Where: `--url`/`--token`, else the environment (`PREVU_URL`, `PREVU_TOKEN`),
else the server config (`--config`, or `./prevu.toml` when present): the
`control` endpoint and `api_token` of that file.

A command-line tool, run once and exiting: plain blocking `urllib` is right
here (no reactor).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from prevu.config import Config, default_config, load_config
from prevu.endpoints import loopback_address
from prevu.errors import ConfigError
from prevu.secretfile import API_TOKEN_FILE, read_secret
from prevu.watch import Follower, LogEvent, brief, noise, watch

DEFAULT_CONFIG = "prevu.toml"


class ClientError(Exception):
    """A request to the API failed; the message says why."""


def _config(path: str | None) -> Config:
    if path:
        return load_config(path)
    if os.path.exists(DEFAULT_CONFIG):
        return load_config(DEFAULT_CONFIG)
    return default_config()


def connection(args: argparse.Namespace) -> tuple[str, str | None]:
    """The API base URL and token from flags, environment or config, in that order."""
    url = args.url or os.environ.get("PREVU_URL")
    token = args.token or os.environ.get("PREVU_TOKEN")
    if url is None or token is None:
        config = _config(args.config)
        if url is None:
            upstream = loopback_address(config.server.control)
            if upstream is None:
                raise ClientError("cannot tell the control app's address: give --url")
            host = f"[{upstream.host}]" if ":" in upstream.host else upstream.host
            url = f"http://{host}:{upstream.port}"
        token = (
            token or config.server.api_token or read_secret(config.server.state_dir, API_TOKEN_FILE)
        )
    return url.rstrip("/"), token


def _request(
    args: argparse.Namespace, method: str, path: str, body: Any, accept: str
) -> tuple[bytes, Any]:
    url, token = connection(args)
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, method=method)
    request.add_header("Accept", accept)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            content: bytes = response.read()
            return content, response.headers
    except urllib.error.HTTPError as error:
        try:
            reason = json.loads(error.read()).get("error", error.reason)
        except (ValueError, AttributeError):
            reason = error.reason
        hint = ""
        if error.code == 401:
            hint = (
                "; give the server's API token with --token or PREVU_TOKEN (twistd's start-up "
                'summary says where it is: PREVU_TOKEN="$(cat STATE_DIR/api_token)")'
            )
        raise ClientError(
            f"{method} {path.partition('?')[0]}: {error.code} {reason}{hint}"
        ) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ClientError(
            f"cannot reach prevu at {url}: {reason}; is twistd prevu running? Its start-up "
            "summary's CLI line gives PREVU_URL (or use --url)"
        ) from None


def call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    """One API request; the decoded JSON answer, or ClientError."""
    content, _ = _request(args, method, path, body, "application/json")
    return json.loads(content or b"null")


def act(args: argparse.Namespace, path: str, body: Any = None) -> tuple[Any, datetime | None]:
    """
    A POST that starts a deployment: the decoded JSON answer, and the server's
    time of the answer less a second (its `Date` header has whole seconds):
    the log lines of this deployment are the ones from that time on.
    """
    content, headers = _request(args, "POST", path, body, "application/json")
    try:
        date = parsedate_to_datetime(headers.get("Date", ""))
    except (TypeError, ValueError):
        date = None
    since = date - timedelta(seconds=1) if date is not None else None
    return json.loads(content or b"null"), since


def text(args: argparse.Namespace, path: str) -> str:
    """One GET of a plain-text API answer (the logs), or ClientError."""
    content, _ = _request(args, "GET", path, None, "text/plain")
    return content.decode("utf-8", "replace")


def _run(handler: Any) -> Any:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            status: int = handler(args)
        except (ClientError, ConfigError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        return status

    return wrapped


def age(created_at: str | None, now: datetime) -> str:
    """`created_at` (ISO 8601) to `now` as `42s`, `5m`, `3h` or `2d`; `-` when unknown."""
    if not created_at:
        return "-"
    try:
        seconds = (now - datetime.fromisoformat(created_at.replace("Z", "+00:00"))).total_seconds()
    except ValueError:
        return "-"
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def destroyed(preview: dict[str, Any]) -> bool:
    """A preview that was torn down (pull request closed, `prevu destroy`): hidden by `ls`."""
    return bool(preview.get("closed", preview.get("status") == "stopped"))


def table(previews: list[dict[str, Any]], now: datetime) -> list[str]:
    """`prevu ls` lines: a header, then one line per preview (id, status, age, SHA, URL, why)."""
    rows = [("PREVIEW", "STATUS", "AGE", "SHA", "URL", "")]
    for preview in previews:
        note = " / ".join((preview.get("error") or preview.get("detail") or "").split("\n"))
        sha = (preview.get("sha") or "")[:12]
        status = str(preview["status"])
        rows.append(
            (preview["id"], status, age(preview.get("created_at"), now), sha, preview["url"], note)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[5]]).rstrip())
    return lines


def list_previews(args: argparse.Namespace) -> int:
    """`prevu ls`: a header and one line per preview; destroyed ones only with --all."""
    previews = call(args, "GET", "/api/previews")
    if not args.all:
        previews = [p for p in previews if not destroyed(p)]
    if args.json:
        print(json.dumps(previews, indent=2))
        return 0
    if not previews:
        print("no previews" + ("" if args.all else " (destroyed ones: prevu ls --all)"))
        return 0
    for line in table(previews, datetime.now(UTC)):
        print(line)
    return 0


def destroy(args: argparse.Namespace) -> int:
    """`prevu destroy NAME`: tear a preview down."""
    preview = call(args, "DELETE", f"/api/previews/{args.name}")
    print(f"{preview['id']}: {preview['status']} (torn down)")
    return 0


def parse_pull_request(text: str) -> tuple[str, int]:
    """`OWNER/REPO#N` (GitLab `group/sub/project#N`) -> (repository, number), else ClientError."""
    repo, _, number = text.rpartition("#")
    if "/" not in repo or not number.isdigit() or int(number) < 1:
        raise ClientError(f"expected OWNER/REPO#NUMBER, got {text!r}")
    return repo, int(number)


def why_lines(trail: list[dict[str, Any]]) -> list[str]:
    """One line per delivery of a trail: time, forge event and action, SHA, decision, why."""
    lines = []
    for entry in trail:
        event = f"{entry['event']} {entry['action']}".strip()
        sha = (entry.get("sha") or "")[:12]
        decision = entry["decision"]
        why = entry.get("reason") or entry.get("preview") or ""
        outcome = f" -> {entry['outcome']}" if entry.get("outcome") else ""
        where = f"{entry['forge']}:{entry['delivery']}"
        line = f"{entry['at']}  {where}  {event}  {sha}  {decision}"
        lines.append(f"{line}  {why}{outcome}".rstrip())
    return lines


def why(args: argparse.Namespace) -> int:
    """`prevu why OWNER/REPO#N`: every delivery of the pull request and what prevu decided."""
    repo, number = parse_pull_request(args.pull_request)
    query = urllib.parse.urlencode({"repo": repo, "number": number})
    trail = call(args, "GET", f"/api/deliveries?{query}")
    if args.json:
        print(json.dumps(trail, indent=2))
        return 0
    if not trail:
        print(f"no deliveries recorded for {repo}#{number}")
        return 0
    for line in why_lines(trail):
        print(line)
    return 0


def _git(*command: str, cwd: str) -> str:
    try:
        result = subprocess.run(
            ["git", *command], cwd=cwd, capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise ClientError(f"{cwd}: no such directory (or git is not installed)") from None
    if result.returncode != 0:
        raise ClientError(f"git {' '.join(command)}: {result.stderr.strip()}")
    return result.stdout.strip()


APP_FILES = ("Dockerfile", ".prevu.toml")
"""Files at the top of a commit that say how to build it (SPEC §3; Compose needs .prevu.toml)."""


def checkout_of(directory: str) -> tuple[str, str, str]:
    """
    The git checkout at `directory`: (top directory, branch, HEAD sha); a
    ClientError saying what to do when it is not a checkout, has no commit,
    is on a detached HEAD or its HEAD has nothing to build.
    """
    try:
        top = _git("rev-parse", "--show-toplevel", cwd=directory)
    except ClientError:
        where = os.path.abspath(directory)
        raise ClientError(
            f"{where} is not in a git checkout: run prevu up in the repository to preview, "
            "or give it with -C DIR"
        ) from None
    try:
        sha = _git("rev-parse", "--verify", "--quiet", "HEAD", cwd=top)
    except ClientError:
        raise ClientError(
            f"{top} has no commit yet: prevu deploys committed code (git add -A && git commit)"
        ) from None
    branch = _git("rev-parse", "--abbrev-ref", "HEAD", cwd=top)
    if branch == "HEAD":
        raise ClientError("detached HEAD: check out a branch first (git switch -c NAME)")
    tracked = set(_git("ls-tree", "--name-only", "HEAD", cwd=top).splitlines())
    if not tracked & set(APP_FILES):
        hint = (
            "it is not committed yet: git add Dockerfile && git commit"
            if os.path.exists(os.path.join(top, "Dockerfile"))
            else "add a Dockerfile at the top of the repository (its app listens on port 8080, "
            "or set [run] port in .prevu.toml) and commit it"
        )
        raise ClientError(f"no Dockerfile in {top} at HEAD ({sha[:12]}): {hint}")
    return top, branch, sha


def _show(brief_lines: bool) -> Any:
    def show(event: LogEvent) -> None:
        if not brief_lines:
            print(event.text, flush=True)
        elif not noise(event.text):
            print(brief(event.text), flush=True)

    return show


def _watch(args: argparse.Namespace, preview: dict[str, Any], since: datetime | None) -> int:
    url, token = connection(args)
    follower = Follower(url, token, preview["id"], _show(not args.timestamps), since=since)
    if args.quiet:
        follower.show = lambda event: None
    try:
        return watch(
            preview,
            lambda method, path: call(args, method, path),
            lambda path: text(args, path),
            follower,
            timeout=args.timeout,
        )
    except KeyboardInterrupt:
        name = preview["id"]
        print(
            f"\n{name}: no longer watching; prevu goes on (prevu logs -f {name})", file=sys.stderr
        )
        return 130


def up(args: argparse.Namespace) -> int:
    """`prevu up`: deploy the current git checkout (its committed HEAD), showing the build."""
    top, branch, sha = checkout_of(args.directory)
    if _git("status", "--porcelain", "--untracked-files=no", cwd=top):
        print("warning: uncommitted changes are not deployed", file=sys.stderr)
    repo = args.repo or Path(top).name
    body = {"repo": repo, "branch": branch, "sha": sha, "clone_url": Path(top).as_uri()}
    if args.access:
        body["access"] = args.access
    preview, since = act(args, "/api/previews", body)
    print(f"{preview['id']}: {preview['status']} ({sha[:12]} of {branch}) {preview['url']}")
    if args.no_wait:
        return 0
    return _watch(args, preview, since)


def redeploy(args: argparse.Namespace) -> int:
    """`prevu redeploy PREVIEW`: build its current commit again (a failed one too), showing it."""
    preview, since = act(args, f"/api/previews/{args.name}/redeploy")
    print(f"{preview['id']}: {preview['status']} (redeploying {(preview['sha'] or '')[:12]})")
    if args.no_wait:
        return 0
    return _watch(args, preview, since)


def logs(args: argparse.Namespace) -> int:
    """`prevu logs PREVIEW [-f]`: its build, run and system log; -f follows until it settles."""
    if not args.follow:
        print(text(args, f"/api/previews/{args.name}/logs"), end="")
        return 0
    preview = call(args, "GET", f"/api/previews/{args.name}")
    return _watch(args, preview, None)


def _common(command: argparse.ArgumentParser) -> None:
    command.add_argument("--url", help="the control app's URL (default: $PREVU_URL or config)")
    command.add_argument("--token", help="the API token (default: $PREVU_TOKEN or config)")
    command.add_argument("--config", "-c", help="server config to read url and token from")


def _watching(command: argparse.ArgumentParser) -> None:
    command.add_argument("--timeout", type=float, default=900.0, help="seconds to wait")
    command.add_argument("--quiet", "-q", action="store_true", help="do not print log lines")
    command.add_argument(
        "--timestamps", "-t", action="store_true", help="print each log line's time"
    )


def add_commands(commands: Any) -> None:
    """Add `ls`, `destroy`, `why`, `up`, `redeploy` and `logs` to the `prevu` argument parser."""
    ls = commands.add_parser("ls", help="list previews (destroyed ones with --all)")
    _common(ls)
    ls.add_argument("--json", action="store_true", help="print the API's JSON")
    ls.add_argument("--all", "-a", action="store_true", help="list destroyed previews too")
    ls.set_defaults(handler=_run(list_previews))

    gone = commands.add_parser("destroy", help="tear a preview down")
    _common(gone)
    gone.add_argument("name", help="the preview id, as `prevu ls` shows it")
    gone.set_defaults(handler=_run(destroy))

    reasons = commands.add_parser(
        "why", help="the webhook deliveries of a pull request and what prevu decided"
    )
    _common(reasons)
    reasons.add_argument("pull_request", metavar="OWNER/REPO#N", help="e.g. acme/shop#42")
    reasons.add_argument("--json", action="store_true", help="print the API's JSON")
    reasons.set_defaults(handler=_run(why))

    deploy = commands.add_parser(
        "up", help="deploy the current git checkout as a preview, showing the build"
    )
    _common(deploy)
    deploy.add_argument("--repo", help="repository name (default: the checkout's directory)")
    deploy.add_argument("-C", dest="directory", default=".", help="the checkout (default: .)")
    deploy.add_argument("--no-wait", action="store_true", help="do not wait until it runs")
    deploy.add_argument(
        "--access",
        choices=("public", "private"),
        help="who may open it (default: the repo's setting; private when a login is configured)",
    )
    _watching(deploy)
    deploy.set_defaults(handler=_run(up))

    again = commands.add_parser(
        "redeploy", help="build a preview's commit again (retries a failed one), showing it"
    )
    _common(again)
    again.add_argument("name", metavar="PREVIEW", help="the preview id, as `prevu ls` shows it")
    again.add_argument("--no-wait", action="store_true", help="do not wait until it runs")
    _watching(again)
    again.set_defaults(handler=_run(redeploy))

    lines = commands.add_parser("logs", help="a preview's build, run and system log")
    _common(lines)
    lines.add_argument("name", metavar="PREVIEW", help="the preview id, as `prevu ls` shows it")
    lines.add_argument(
        "--follow", "-f", action="store_true", help="follow new lines until it runs or fails"
    )
    _watching(lines)
    lines.set_defaults(handler=_run(logs), timestamps=True)
