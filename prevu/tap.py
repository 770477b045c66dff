"""twistd's entry point: options and `makeService`."""

from __future__ import annotations

import os
from typing import Any

from twisted.python import usage

from prevu.config import Config, default_config, load_config
from prevu.errors import ConfigError

DEFAULT_CONFIG = "prevu.toml"


class Options(usage.Options):
    """`twistd prevu` options."""

    synopsis = "[--config PATH]"
    longdesc = (
        "Run prevu: pull-request preview environments behind a routing proxy. "
        "Without --config, ./prevu.toml is read if present, else the embedded defaults apply "
        "(proxy on 127.0.0.1:8000, control app on 127.0.0.1:8001, previews under *.localhost)."
    )
    optParameters = [
        ["config", "c", None, "Path of the server config file (TOML)."],
    ]

    config_value: Config

    def postOptions(self) -> None:
        path = self["config"]
        if path is None and os.path.exists(DEFAULT_CONFIG):
            path = DEFAULT_CONFIG
        try:
            self.config_value = load_config(path) if path else default_config()
        except ConfigError as error:
            raise usage.UsageError(f"bad config: {error}") from None


def makeService(options: Options) -> Any:
    """Build prevu's service tree on the global reactor."""
    from twisted.internet import reactor

    from prevu.proxy.fastpath import install_fast_poll
    from prevu.service import build_service

    reactor_: Any = reactor
    install_fast_poll(reactor_)
    quiet_factories()
    # Objects made at start-up (modules, config, services) live as long as the
    # process: moving them out of the collector's sight keeps full collections
    # short (measured: proxy p99 15 ms -> 3 ms under load, CPU unchanged).
    reactor_.callWhenRunning(reactor_.callLater, 2.0, freeze_startup_objects)
    return build_service(options.config_value, reactor_)


def quiet_factories() -> None:
    """
    No "Starting factory"/"Stopping factory" line for every connection: each
    health probe, upstream and forge API call made a pair (a fifth of the log).
    Twisted's `Factory.noisy` is the switch; twistd runs only prevu, so it is
    turned off once for the process here, in the composition root.
    """
    from twisted.internet.protocol import Factory

    Factory.noisy = False


def freeze_startup_objects() -> None:
    """Collect once, then leave everything alive now out of future collections."""
    import gc

    gc.collect()
    gc.freeze()
