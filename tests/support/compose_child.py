"""
A prevu (the Compose e2e stack) in a process of its own, for SIGKILL tests.

`python -m tests.support.compose_child TMP NUMBER SHA PREFIX SESSION`: boots
the stack of tests/test_compose_e2e.py on TMP's state dir and network prefix
PREFIX, labels every object with the parent's test SESSION, delivers
`opened` for pull request NUMBER at SHA, and runs until it is killed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool

import tests.test_compose_e2e as compose_e2e
import tests.test_previews_e2e as previews_e2e
from tests.support.git_repos import ForgeRepo


def main() -> None:
    tmp, number, sha, prefix, session = sys.argv[1:6]
    labels = {**previews_e2e.TEST_LABELS, "prevu.test.session": session}
    previews_e2e.TEST_LABELS = labels  # type: ignore[misc]
    compose_e2e.TEST_LABELS = labels  # type: ignore[misc]
    pool = ThreadPool(name="child")
    pool.start()
    root = Path(tmp) / "forge"
    forge = ForgeRepo(root / "hello-world.git", root / "hello-world-work")

    async def run() -> None:
        stack = compose_e2e.ComposeStack(reactor, pool, Path(tmp), forge, prefix=prefix)
        await stack.start()
        await stack.pull_request("opened", int(number), sha)
        print("delivered", flush=True)

    Deferred.fromCoroutine(run())
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
