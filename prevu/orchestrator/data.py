"""
A preview's data (issue 18, docs/data.md): the `[data]` commands and reset.

- `on_push` runs on every start of a revision, the first included, in the
  exposed service's running container once it is healthy and before the
  route moves to it; a failure is a `DataFailed` naming the step, and the
  jobs answer `StartFailed(on_push=True)`: the previous revision keeps
  serving and the status stays `running` with `error` set.
- `seed` runs once per preview (since its volumes were made), after the
  first start's `on_push`; the slot's `seeded` flag, kept in the record,
  says it ran, so that a restart of prevu never seeds again.
- `reset` (the `Orchestrator.reset` facade, the API, `/preview reset`, the
  dashboard) marks the slot to `wipe` and redeploys its commit: the build job
  first removes every container, image, network and volume of the preview
  (`Runtime.remove(preview, data=True)`), then builds and starts the same
  commit, whose start runs `on_push` and then `seed` again.

Commands run through the Runtime port's `exec` only; their output goes to the
preview's log (`run` stream), framed by `system` lines. Reactor thread only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Protocol

from prevu import lifecycle as lc
from prevu.errors import DockerError, PrevuError
from prevu.orchestrator.registry import CancelToken, Slot
from prevu.ports import LogStream
from prevu.routing import Route, RouteRegistry
from prevu.runtime import Deployed, Runtime

Step = Literal["on_push", "seed"]
Note = Callable[[LogStream, str], None]
OUTPUT_KEPT = 2000
"""Characters of a failed command's output kept in the preview's `error` (its tail)."""


class DataFailed(PrevuError):
    """
    A `[data]` command failed: `step` ("on_push" or "seed"), its `exit_code`
    (None when it could not run at all) and its `output` (or the engine's reason).
    """

    def __init__(self, step: Step, exit_code: int | None, output: str) -> None:
        self.step, self.exit_code, self.output = step, exit_code, output
        how = f"exit {exit_code}" if exit_code is not None else "could not run"
        tail = output.strip()[-OUTPUT_KEPT:]
        super().__init__(f"{step} failed ({how}): {tail}" if tail else f"{step} failed ({how})")


async def run_step(
    runtime: Runtime,
    cancel: CancelToken,
    deployed: Deployed,
    step: Step,
    argv: Sequence[str],
    note: Note,
) -> None:
    """
    Run one `[data]` command in the exposed service's running container.

    Raises DataFailed on a non-zero exit or an engine error, Superseded when
    the job is cancelled meanwhile.
    """
    note("system", f"{step}: running {list(argv)}")
    try:
        result = await cancel.wait(runtime.exec(deployed, deployed.exposed, argv))
    except DockerError as error:
        note("system", f"{step} could not run: {error}")
        raise DataFailed(step, None, str(error)) from None
    for line in result.output.splitlines():
        note("run", line)
    if result.exit_code != 0:
        note("system", f"{step} failed with exit code {result.exit_code}")
        raise DataFailed(step, result.exit_code, result.output)
    note("system", f"{step}: done")


def resettable(state: lc.Preview) -> str | None:
    """Why a preview in `state` cannot be reset now, or None when it can."""
    if state.closed:
        return "the preview is closed"
    if state.target is None:
        return "the preview has no commit to start again"
    return None


class Feeder(Protocol):
    """What reset needs of the driver: its route table and its mailbox."""

    routes: RouteRegistry

    def feed(self, slot: Slot, event: lc.Event) -> None: ...


def reset(slot: Slot | None, driver: Feeder, source: str) -> bool:
    """
    Ask for a reset of `slot`: its host shows the self-refreshing 503 page
    (in the route table's `source`), the next build wipes its data, and its
    commit is deployed again (a `Redeploy`). False, and nothing done, when
    the preview is unknown (None) or cannot be reset now (`resettable`).
    """
    if slot is None or resettable(slot.state) is not None:
        return False
    slot.wipe = True
    slot.seeded = False
    building = Route(
        host=slot.name.host,
        upstream=None,
        access=slot.access,
        state="building",
        preview=slot.id,
        repo=slot.identity.repo,
    )
    driver.routes.put(source, building)
    driver.feed(slot, lc.Redeploy())
    return True
