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
    top = argparse.ArgumentParser(prog="prevu", description="Pull-request preview environments.")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser("check-config", help="validate a server config file")
    check.add_argument("path", help="the TOML file to check")
    check.set_defaults(handler=check_config)

    add_auth_commands(commands)
    add_client_commands(commands)

    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the exit status."""
    args = parser().parse_args(argv)
    status: int = args.handler(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
