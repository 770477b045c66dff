"""The `prevu` console script."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from prevu.auth.commands import add_commands as add_auth_commands
from prevu.client import add_commands as add_client_commands
from prevu.config import load_config
from prevu.errors import ConfigError


def check_config(args: argparse.Namespace) -> int:
    """Validate a server config file: exit 0, or 1 naming file, key and reason."""
    try:
        config = load_config(args.path)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{config.path}: ok")
    return 0


def parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    top = argparse.ArgumentParser(
        prog="prevu",
        description="Pull-request preview environments.",
        epilog="--url, --token and --config (-c) of the API commands may also come before COMMAND.",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser("check-config", help="validate a server config file")
    check.add_argument("path", help="the TOML file to check")
    check.set_defaults(handler=check_config)

    add_auth_commands(commands)
    add_client_commands(commands)

    return top


LEADING = ("--url", "--token", "--config", "-c")
"""The API commands' options (prevu.client._common) also accepted before the command."""


def options_after_command(argv: Sequence[str]) -> list[str]:
    """
    `prevu --config x.toml up` as `prevu up --config x.toml`: the leading
    `LEADING` options (`--opt VALUE` or `--opt=VALUE`) move after the command
    name, where argparse's subcommands look for them; anything else is kept
    as given (so a command without them still refuses them, naming them).
    """
    rest, moved = list(argv), []
    while rest and rest[0].split("=", 1)[0] in LEADING:
        option = rest.pop(0)
        moved.append(option)
        if "=" not in option and rest:
            moved.append(rest.pop(0))
    if not moved or not rest:
        return list(argv)
    return [rest[0], *moved, *rest[1:]]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the exit status."""
    args = parser().parse_args(options_after_command(sys.argv[1:] if argv is None else argv))
    status: int = args.handler(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
