"""
Identity by construction on the real Docker engine and real git (issue 11):

- kind 2: `label = "{branch}"` with PRs 41, 42, 43 on `fix/login`, `fix-login`,
  `fix_login` gives three previews; closing 42 leaves 41 and 43 served;
- kind 5: two prevus (two instances) with the same `[docker] network` prefix
  and the same preview id: separate networks, no reachability by IP from one
  instance's container to the other's, neither removes the other's objects,
  nothing left after both tear down.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted

from prevu.naming import network_name
from prevu.runtime import Deployed
from tests.support.git_repos import ForgeRepo
from tests.support.timeouts import within
from tests.test_previews_e2e import Stack, push, site_files

pytestmark = pytest.mark.docker


async def opened_on_branch(stack: Stack, number: int, sha: str, branch: str) -> Any:
    """An `opened` delivery of PR `number` whose head branch is `branch`."""
    body = json.loads(stack.payload("pull_request-opened.json", number, sha))
    body["pull_request"]["head"]["ref"] = branch
    return await stack.deliver("pull_request", json.dumps(body).encode())


async def reboot(stack: Stack, **changes: Any) -> None:
    """Restart `stack` with `changes` to its config (`server=`, `docker=` replaced tables)."""
    await stack.shutdown()
    stack.config = attrs.evolve(stack.config, **changes)
    stack.boot()
    await stack.start()


@pytest_twisted.ensureDeferred
async def test_branch_template_keeps_three_pull_requests_apart(
    reactor: Any, thread_pool: Any, tmp_path: Path, docker_client: Any
) -> None:
    """Kind 2: three previews; closing 42 leaves 41 and 43 served with their own pages."""
    stack = Stack(reactor, thread_pool, tmp_path, ForgeRepo.create(tmp_path / "forge", "app"))
    try:
        await reboot(stack, server=attrs.evolve(stack.config.server, label="{branch}"))
        branches = {41: "fix/login", 42: "fix-login", 43: "fix_login"}
        shas, ids = {}, {}
        for number, branch in branches.items():
            shas[number] = push(stack.forge, number, site_files(f"pr {number}\n"))
            code, body = await opened_on_branch(stack, number, shas[number], branch)
            assert code == 202, body
            ids[number] = body["preview"]
        assert ids[41] == "fix-login" and len(set(ids.values())) == 3
        for number in branches:
            await stack.until(ids[number], "running")
        for number in branches:
            assert await stack.get(f"{ids[number]}.localhost") == (200, f"pr {number}\n".encode())

        assert (await stack.pull_request("closed", 42, shas[42]))[0] == 202
        await stack.until(ids[42], "stopped")
        await stack.settled()
        assert stack.leftovers(docker_client, ids[42]) == []
        assert (await stack.get(f"{ids[42]}.localhost"))[0] == 410  # "removed" page
        for number in (41, 43):
            assert await stack.get(f"{ids[number]}.localhost") == (200, f"pr {number}\n".encode())
            record = stack.store.get(ids[number])
            assert record is not None and record.status == "running"

        for number in (41, 43):
            assert (await stack.pull_request("closed", number, shas[number]))[0] == 202
            await stack.until(ids[number], "stopped")
        await stack.settled()
        assert [stack.leftovers(docker_client, ids[n]) for n in branches] == [[], [], []]
    finally:
        await stack.shutdown()


async def http_get(stack: Stack, preview: str, address: str) -> int:
    """Exit code of an HTTP GET (`busybox nc`) from `preview`'s container to `address`:8080."""
    serving = stack.orchestrator.serving(preview)
    assert serving is not None
    deployed = Deployed(preview, f"{preview}.localhost", "app", {"app": serving.container})
    request = "printf 'GET / HTTP/1.0\\r\\n\\r\\n'"
    script = f"{request} | /bin/busybox nc -w 3 {address} 8080 | /bin/busybox grep -q ' 200 '"
    argv = ["/bin/busybox", "sh", "-c", script]
    result = await within(stack.orchestrator.runtime.exec(deployed, "app", argv), 30)
    return result.exit_code


@pytest_twisted.ensureDeferred
async def test_two_instances_with_one_prefix_stay_apart(
    reactor: Any, thread_pool: Any, tmp_path: Path, docker_client: Any
) -> None:
    """Kind 5: same prefix, same preview id on two prevus: separate, unreachable, both cleaned."""
    one = Stack(reactor, thread_pool, tmp_path / "one", ForgeRepo.create(tmp_path / "f1", "app"))
    two = Stack(reactor, thread_pool, tmp_path / "two", ForgeRepo.create(tmp_path / "f2", "app"))
    prefix = one.config.docker.network
    try:
        await one.start()
        await reboot(two, docker=attrs.evolve(two.config.docker, network=prefix))
        assert one.orchestrator.instance != two.orchestrator.instance
        preview = "pr-1-hello-world"
        sha_one = push(one.forge, 1, site_files("instance one, private\n"))
        sha_two = push(two.forge, 1, site_files("instance two\n"))
        assert (await one.pull_request("opened", 1, sha_one))[1]["preview"] == preview
        assert (await two.pull_request("opened", 1, sha_two))[1]["preview"] == preview
        await one.until(preview, "running")
        await two.until(preview, "running")

        net_one = network_name(prefix, one.orchestrator.instance, preview)
        net_two = network_name(prefix, two.orchestrator.instance, preview)
        for stack, network in ((one, net_one), (two, net_two)):
            serving = stack.orchestrator.serving(preview)
            assert serving is not None
            attrs_ = docker_client.api.inspect_container(serving.container)
            assert list(attrs_["NetworkSettings"]["Networks"]) == [network]
        assert net_one != net_two

        address_one = one.orchestrator.serving(preview).address  # type: ignore[union-attr]
        address_two = two.orchestrator.serving(preview).address  # type: ignore[union-attr]
        assert await http_get(two, preview, address_two) == 0, "the probe can succeed (own address)"
        assert await http_get(two, preview, address_one) != 0, "instance two cannot reach one by IP"

        # instance one tears down: two still serves, its objects untouched.
        assert (await one.pull_request("closed", 1, sha_one))[0] == 202
        await one.until(preview, "stopped")
        await one.settled()
        assert one.leftovers(docker_client, preview) == []
        assert await two.get(f"{preview}.localhost") == (200, b"instance two\n")
        assert [n["Name"] for n in docker_client.api.networks(names=[net_two])] == [net_two]

        assert (await two.pull_request("closed", 1, sha_two))[0] == 202
        await two.until(preview, "stopped")
        await two.settled()
        assert two.leftovers(docker_client, preview) == []
        left = [n["Name"] for n in docker_client.api.networks() if n["Name"].startswith(prefix)]
        assert left == []
    finally:
        await one.shutdown()
        await two.shutdown()
