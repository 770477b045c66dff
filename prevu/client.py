"""
`prevu ls`, `prevu destroy NAME` and `prevu up`: the CLI side of the API.

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
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from prevu.config import Config, default_config, load_config
from prevu.endpoints import loopback_address
from prevu.errors import ConfigError
from prevu.secretfile import API_TOKEN_FILE, read_secret

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


def call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    """One API request; the decoded JSON answer, or ClientError."""
    url, token = connection(args)
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, method=method)
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        try:
            reason = json.loads(error.read()).get("error", error.reason)
        except (ValueError, AttributeError):
            reason = error.reason
        raise ClientError(f"{method} {path}: {error.code} {reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ClientError(f"cannot reach prevu at {url}: {reason}") from None


def _run(handler: Any) -> Any:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            status: int = handler(args)
        except (ClientError, ConfigError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        return status

    return wrapped


def list_previews(args: argparse.Namespace) -> int:
    """`prevu ls`: one line per preview."""
    previews = call(args, "GET", "/api/previews")
    if args.json:
        print(json.dumps(previews, indent=2))
        return 0
    if not previews:
        print("no previews")
        return 0
    width = max(len(p["id"]) for p in previews)
    for preview in previews:
        note = preview.get("error") or preview.get("detail") or ""
        line = (
            f"{preview['id']:<{width}}  {preview['status']:<8}  "
            f"{(preview['sha'] or '')[:12]:<12}  {preview['url']}"
        )
        print(f"{line}  {note}".rstrip())
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
    result = subprocess.run(["git", *command], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ClientError(f"git {' '.join(command)}: {result.stderr.strip()}")
    return result.stdout.strip()


def up(args: argparse.Namespace) -> int:
    """`prevu up`: deploy the current git checkout (its committed HEAD) as a preview."""
    top = _git("rev-parse", "--show-toplevel", cwd=args.directory)
    branch = _git("rev-parse", "--abbrev-ref", "HEAD", cwd=top)
    if branch == "HEAD":
        raise ClientError("detached HEAD: check out a branch first")
    sha = _git("rev-parse", "HEAD", cwd=top)
    if _git("status", "--porcelain", "--untracked-files=no", cwd=top):
        print("warning: uncommitted changes are not deployed", file=sys.stderr)
    repo = args.repo or Path(top).name
    body = {"repo": repo, "branch": branch, "sha": sha, "clone_url": Path(top).as_uri()}
    if args.access:
        body["access"] = args.access
    preview = call(args, "POST", "/api/previews", body)
    print(f"{preview['id']}: {preview['status']} ({sha[:12]} of {branch}) {preview['url']}")
    if args.no_wait:
        return 0
    deadline = time.monotonic() + args.timeout
    while preview["status"] not in ("running", "failed", "stopped"):
        if time.monotonic() > deadline:
            print(f"{preview['id']}: still {preview['status']} after {args.timeout:g}s")
            return 1
        time.sleep(1.0)
        preview = call(args, "GET", f"/api/previews/{preview['id']}")
    if preview["status"] != "running":
        print(f"{preview['id']}: {preview['status']}: {preview.get('error') or ''}".rstrip())
        return 1
    print(f"{preview['id']}: running at {preview['url']}")
    return 0


def _common(command: argparse.ArgumentParser) -> None:
    command.add_argument("--url", help="the control app's URL (default: $PREVU_URL or config)")
    command.add_argument("--token", help="the API token (default: $PREVU_TOKEN or config)")
    command.add_argument("--config", "-c", help="server config to read url and token from")


def add_commands(commands: Any) -> None:
    """Add `ls`, `destroy`, `why` and `up` to the `prevu` argument parser."""
    ls = commands.add_parser("ls", help="list previews")
    _common(ls)
    ls.add_argument("--json", action="store_true", help="print the API's JSON")
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

    deploy = commands.add_parser("up", help="deploy the current git checkout as a preview")
    _common(deploy)
    deploy.add_argument("--repo", help="repository name (default: the checkout's directory)")
    deploy.add_argument("-C", dest="directory", default=".", help="the checkout (default: .)")
    deploy.add_argument("--no-wait", action="store_true", help="do not wait until it runs")
    deploy.add_argument(
        "--access",
        choices=("public", "private"),
        help="who may open it (default: the repo's setting; private when a login is configured)",
    )
    deploy.add_argument("--timeout", type=float, default=900.0, help="seconds to wait")
    deploy.set_defaults(handler=_run(up))
