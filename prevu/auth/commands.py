"""
The `prevu` subcommands of reviewer access: `hash-password`, `bypass-token`,
`share`. Registered by `prevu/cli.py`.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import TextIO
from urllib.parse import quote, urlsplit

from prevu.auth.passwords import hash_password
from prevu.auth.rules import share_url
from prevu.auth.tokens import Share, Signer, bypass_token, encode_share
from prevu.config import Config, default_config, load_config
from prevu.errors import ConfigError
from prevu.secretfile import read_secret
from prevu.units import format_duration, parse_duration

DEFAULT_CONFIG = "prevu.toml"


def read_password(stdin: TextIO, stderr: TextIO) -> str | None:
    """The password from a pipe (first line), or asked twice on a terminal."""
    if not stdin.isatty():
        return stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ", stream=stderr)
    second = getpass.getpass("Again: ", stream=stderr)
    if first != second:
        print("error: the passwords differ", file=stderr)
        return None
    return first


def hash_password_command(args: argparse.Namespace) -> int:
    """Print the users-file hash of a password read from stdin or the terminal."""
    password = read_password(sys.stdin, sys.stderr)
    if password is None:
        return 1
    if not password:
        print("error: empty password", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def _config(path: str | None) -> Config:
    if path is None and os.path.exists(DEFAULT_CONFIG):
        path = DEFAULT_CONFIG
    return load_config(path) if path else default_config()


def _signer(config: Config) -> Signer:
    secret = config.auth.cookie_secret or read_secret(config.server.state_dir)
    if not secret:
        raise ConfigError(
            config.path, "auth.cookie_secret", "is required to sign tokens (or run prevu once)"
        )
    return Signer.from_secrets(secret, config.auth.cookie_secret_previous)


def bypass_token_command(args: argparse.Namespace) -> int:
    """Print the X-Prevu-Bypass token of a repository (or of a fixed route's host)."""
    try:
        signer = _signer(_config(args.config))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.host:
        print(bypass_token(signer, host=args.repo))
    else:
        print(bypass_token(signer, repo=args.repo.strip("/")))
    return 0


def share_command(args: argparse.Namespace) -> int:
    """Print a signed URL that opens one preview until it expires."""
    try:
        duration = parse_duration(args.duration)
        config = _config(args.config)
    except (ValueError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if "." in args.preview or "://" in args.preview:
        return _share_locally(config, args.preview, duration)
    return _share_through_api(config, args, duration)


def _share_locally(config: Config, preview: str, duration: float) -> int:
    host = urlsplit(preview).hostname if "://" in preview else preview.split(":")[0]
    if not host:
        print(f"error: not a host or URL: {preview}", file=sys.stderr)
        return 1
    try:
        signer = _signer(config)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    token = encode_share(signer, Share(host=host.lower(), expires=time.time() + duration))
    print(share_url(config.server.public_url, host.lower(), token))
    print(f"valid for {format_duration(duration)}", file=sys.stderr)
    return 0


def _share_through_api(config: Config, args: argparse.Namespace, duration: float) -> int:
    base = (args.api or os.environ.get("PREVU_API_URL") or config.server.public_url).rstrip("/")
    token = args.token or os.environ.get("PREVU_API_TOKEN") or config.server.api_token
    if not token:
        print("error: give --token, PREVU_API_TOKEN or [server] api_token", file=sys.stderr)
        return 1
    request = urllib.request.Request(
        f"{base}/api/previews/{quote(args.preview, safe='')}/share",
        data=json.dumps({"for": f"{int(duration)}s"}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.load(response)
    except urllib.error.HTTPError as error:
        try:
            reason = json.load(error).get("error", error.reason)
        except ValueError:
            reason = error.reason
        print(f"error: {error.code}: {reason}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as error:
        print(f"error: cannot reach {base}: {error}", file=sys.stderr)
        return 1
    print(body["url"])
    print(f"valid until {body['expires_at']}", file=sys.stderr)
    return 0


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the reviewer-access subcommands."""
    hashing = commands.add_parser(
        "hash-password", help="hash a password for the users file (reads stdin or prompts)"
    )
    hashing.set_defaults(handler=hash_password_command)

    bypass = commands.add_parser(
        "bypass-token", help="print the X-Prevu-Bypass token of a repository"
    )
    bypass.add_argument("repo", help="owner/name of the repository (or a route host with --host)")
    bypass.add_argument(
        "--host", action="store_true", help="REPO is the host of a [[routes]] entry"
    )
    bypass.add_argument("--config", "-c", help="server config (default ./prevu.toml)")
    bypass.set_defaults(handler=bypass_token_command)

    share = commands.add_parser("share", help="print a signed link that opens one preview")
    share.add_argument("preview", help="preview id (asks the API), or its host or URL (signs here)")
    share.add_argument("--for", dest="duration", default="24h", help="how long (default 24h)")
    share.add_argument("--config", "-c", help="server config (default ./prevu.toml)")
    share.add_argument("--api", help="control app URL (default PREVU_API_URL or public_url)")
    share.add_argument("--token", help="API token (default PREVU_API_TOKEN or api_token)")
    share.set_defaults(handler=share_command)
