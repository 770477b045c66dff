"""
Builds end to end on the real engine (issue 10): BuildKit through the Docker CLI,
`[build] target`, build secrets, `[[repos]] env`/`secrets` and their precedence,
what forks get, the repository's shared cache image, cancelled and timed-out builds.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from attrs import evolve

from prevu import labels as lb
from prevu.config import RepoConfig
from tests.support.git_repos import ForgeRepo
from tests.support.timeouts import sleep, within
from tests.test_previews_e2e import REPO, Stack, push

pytestmark = pytest.mark.docker

# A multi-stage app: `final` is the target, `unused` must not be built; the cache
# mount and the secret mount are BuildKit-only; the secret's length (never its
# value) is written into a page.
APP_DOCKERFILE = """\
FROM scratch AS base
COPY busybox /bin/busybox
RUN --mount=type=cache,target=/cache \
    ["/bin/busybox", "sh", "-c", "echo base-step-NONCE >> /cache/n"]

FROM base AS unused
RUN ["/bin/busybox", "false"]

FROM base AS final
RUN --mount=type=secret,id=token ["/bin/busybox", "sh", "-c", \
"/bin/busybox mkdir -p /gen && if [ -f /run/secrets/token ]; then echo has-secret-NONCE; \
/bin/busybox wc -c < /run/secrets/token > /gen/secret; else echo no-secret > /gen/secret; fi"]
COPY www /www
CMD ["/bin/busybox", "sh", "-c", "/bin/busybox cp /gen/secret /www/secret; \
env > /www/env; exec /bin/busybox httpd -f -p 8080 -h /www"]
"""
PREVU_TOML = """\
[build]
target = "final"

[run]
env = { SHARED = "toml", FROM_TOML = "toml", ENV_AND_TOML = "toml" }
"""
SLOW_DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "echo slow-NONCE; exec /bin/busybox sleep 40"]
COPY www /www
CMD ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
"""


def app_files(index: str, nonce: str, dockerfile: str = APP_DOCKERFILE) -> dict[str, Any]:
    return {
        "Dockerfile": dockerfile.replace("NONCE", nonce),
        ".prevu.toml": PREVU_TOML,
        "www/index.html": index,
    }


def configure(stack: Stack, repo: RepoConfig, **docker: Any) -> None:
    stack.config = evolve(stack.config, repos=(repo,), docker=evolve(stack.config.docker, **docker))


@pytest_twisted.async_yield_fixture
async def forge(tmp_path: Path) -> AsyncIterator[ForgeRepo]:
    yield ForgeRepo.create(tmp_path / "forge", "hello-world")


async def booted(stack: Stack) -> Stack:
    await stack.shutdown()
    stack.boot()
    await stack.start()
    return stack


def env_page(body: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in body.decode().splitlines() if "=" in line)


async def page(stack: Stack, host: str, path: str) -> tuple[int, bytes]:
    url = f"http://127.0.0.1:{stack.proxy_port}{path}"
    response = await within(treq.get(url, headers={"Host": host}, persistent=False), 10)
    return response.code, await within(treq.content(response), 10)


async def api(stack: Stack, path: str) -> bytes:
    url = f"http://127.0.0.1:{stack.control_port}{path}"
    headers = {"Authorization": "Bearer t"}
    response = await within(treq.get(url, headers=headers, persistent=False), 10)
    return await within(treq.content(response), 10)  # type: ignore[no-any-return]


def cleanup(docker_client: Any, instance: str) -> None:
    """Remove whatever a failed test left of its own prevu instance (never anything else)."""
    mine = {"label": f"{lb.INSTANCE}={instance}"}
    for container in docker_client.api.containers(all=True, filters=mine):
        docker_client.api.remove_container(container["Id"], force=True)
    for image in docker_client.api.images(filters=mine):
        docker_client.api.remove_image(image["Id"], force=True)
    for network in docker_client.api.networks(filters=mine):
        docker_client.api.remove_network(network["Id"])


def untagged_of(docker_client: Any, instance: str) -> list[str]:
    """Dangling images of this prevu instance (a stage or a replaced image left behind)."""
    images = docker_client.api.images(
        all=True, filters={"dangling": True, "label": f"{lb.INSTANCE}={instance}"}
    )
    return [image["Id"] for image in images]


@pytest_twisted.ensureDeferred
async def test_secrets_env_target_and_the_shared_cache(
    reactor: Any, thread_pool: Any, tmp_path: Path, forge: ForgeRepo, docker_client: Any
) -> None:
    """Target + cache mount build; a build secret reaches its step and nothing else;
    env/secrets precedence inside the preview; the next PR reuses the cache image,
    which the TTL then removes; nothing untagged is left after close."""
    token = f"build-token-{uuid.uuid4().hex}"
    token_file = tmp_path / "token"
    token_file.write_text(token)
    run_secret = f"run-secret-{uuid.uuid4().hex}"
    repo = RepoConfig(
        REPO,
        access="public",
        env={"SHARED": "env", "ENV_AND_TOML": "env", "FROM_ENV": "env"},
        secrets={"SHARED": "from-secrets", "API_KEY": run_secret},
        build_secrets={"token": str(token_file)},
        build_secret_values=(token,),
    )
    stack = Stack(reactor, thread_pool, tmp_path, forge)
    configure(stack, repo)
    await booted(stack)
    instance = stack.orchestrator.instance
    runtime: Any = stack.orchestrator.runtime
    cache_tag = runtime.cache_tag(f"github/{REPO.lower()}")
    try:
        nonce = uuid.uuid4().hex
        first = push(forge, 21, app_files("one\n", nonce))
        assert (await stack.pull_request("opened", 21, first))[0] == 202
        await stack.until("pr-21-hello-world", "running", timeout=120)
        host = "pr-21-hello-world.localhost"
        assert await page(stack, host, "/") == (200, b"one\n")
        assert await page(stack, host, "/secret") == (200, f"{len(token)}\n".encode())
        env = env_page((await page(stack, host, "/env"))[1])
        # PREVU_* > [[repos]] secrets > [[repos]] env > .prevu.toml env
        assert env["SHARED"] == "from-secrets" and env["API_KEY"] == run_secret
        assert env["ENV_AND_TOML"] == "env" and env["FROM_ENV"] == "env"
        assert env["FROM_TOML"] == "toml" and env["PREVU_PR"] == "21"

        logs = [entry.line for entry in stack.store.read_logs("pr-21-hello-world")]
        assert f"has-secret-{nonce}" in logs, logs  # the step's own output
        assert not any("LABEL" in line for line in logs)
        assert not any("unused" in line and "RUN" in line for line in logs)
        record = stack.store.get("pr-21-hello-world")
        assert record is not None and record.container and record.image
        everywhere = json.dumps(
            [
                docker_client.api.history(record.image),
                docker_client.api.inspect_image(record.image),
                docker_client.api.inspect_container(record.container),
                logs,
            ]
        )
        everywhere += (await api(stack, "/api/previews/pr-21-hello-world")).decode()
        everywhere += (await api(stack, "/api/previews/pr-21-hello-world/logs")).decode()
        assert "pr-21-hello-world" in everywhere and token not in everywhere

        # The repository's cache image: labelled, no preview label; the next PR reads it.
        cache = docker_client.api.inspect_image(cache_tag)
        labels = cache["Config"]["Labels"]
        assert labels["prevu.cache"] == f"github/{REPO.lower()}" and lb.PREVIEW not in labels
        second = push(forge, 22, app_files("two\n", nonce))
        started = time.monotonic()
        assert (await stack.pull_request("opened", 22, second))[0] == 202
        await stack.until("pr-22-hello-world", "running", timeout=120)
        assert time.monotonic() - started < 60
        assert await page(stack, "pr-22-hello-world.localhost", "/") == (200, b"two\n")
        logs = [entry.line for entry in stack.store.read_logs("pr-22-hello-world")]
        assert any(cache_tag in line for line in logs), logs  # --cache-from is read
        assert sum(line.endswith(" CACHED") for line in logs) >= 2, logs
        assert f"has-secret-{nonce}" not in logs  # the RUN was cached, not run

        for number, sha in ((21, first), (22, second)):
            assert (await stack.pull_request("closed", number, sha))[0] == 202
            await stack.until(f"pr-{number}-hello-world", "stopped")
        await stack.settled()
        await sleep(0.5)
        for number in (21, 22):
            assert stack.leftovers(docker_client, f"pr-{number}-hello-world") == []
        assert untagged_of(docker_client, instance) == []

        # Within the TTL, or while the repository has a preview, the cache stays.
        now, ttl = time.time(), 3600.0
        repository = f"github/{REPO.lower()}"
        assert (
            await within(runtime.prune_caches(frozenset({repository}), now + 2 * ttl, ttl), 30)
            == []
        )
        assert await within(runtime.prune_caches(frozenset(), now, ttl), 30) == []
        assert docker_client.api.images(name=cache_tag.split(":")[0])
        removed = await within(runtime.prune_caches(frozenset(), now + 2 * ttl, ttl), 30)
        assert removed == [repository]
        assert [
            i
            for i in docker_client.api.images(name=cache_tag.split(":")[0])
            if cache_tag in (i.get("RepoTags") or [])
        ] == []
    finally:
        await stack.shutdown()
        cleanup(docker_client, instance)


async def approve(stack: Stack, number: int, sha: str) -> None:
    # A maintainer's `/preview approve` (tests/test_commands.py) ends in this facade call.
    assert stack.orchestrator.approve_commit(f"pr-{number}-hello-world", sha, "maria") is None


@pytest.mark.parametrize("forks", ["allow", "approve"])
@pytest_twisted.ensureDeferred
async def test_what_a_fork_gets(
    reactor: Any,
    thread_pool: Any,
    tmp_path: Path,
    forge: ForgeRepo,
    docker_client: Any,
    forks: str,
) -> None:
    """forks = "allow": the fork's build and container get no secrets and no cache image;
    forks = "approve": the approved SHA gets them."""
    token_file = tmp_path / "token"
    token_file.write_text("fork-token-value")
    repo = RepoConfig(
        REPO,
        access="public",
        forks=forks,  # type: ignore[arg-type]
        env={"PLAIN": "env"},
        secrets={"API_KEY": "run-secret-value"},
        build_secrets={"token": str(token_file)},
    )
    stack = Stack(reactor, thread_pool, tmp_path, forge)
    configure(stack, repo)
    await booted(stack)
    instance = stack.orchestrator.instance
    try:
        sha = push(forge, 31, app_files("fork\n", uuid.uuid4().hex))
        assert (await stack.pull_request("opened", 31, sha, fork=True))[0] == 202
        if forks == "approve":
            await sleep(0.5)
            assert stack.store.get("pr-31-hello-world").status == "queued"  # type: ignore[union-attr]
            await approve(stack, 31, sha)
        await stack.until("pr-31-hello-world", "running", timeout=120)
        host = "pr-31-hello-world.localhost"
        env = env_page((await page(stack, host, "/env"))[1])
        secret_page = (await page(stack, host, "/secret"))[1]
        assert env["PLAIN"] == "env"
        cache = docker_client.api.images(
            filters={"label": [f"{lb.INSTANCE}={instance}", "prevu.cache"]}
        )
        if forks == "allow":
            assert "API_KEY" not in env and secret_page == b"no-secret\n"
            assert cache == []
        else:
            assert env["API_KEY"] == "run-secret-value"
            assert secret_page == f"{len('fork-token-value')}\n".encode()
        assert (await stack.pull_request("closed", 31, sha, fork=True))[0] == 202
        await stack.until("pr-31-hello-world", "stopped")
        await stack.settled()
    finally:
        await stack.shutdown()
        cleanup(docker_client, instance)


def build_processes(marker: str) -> list[str]:
    """Command lines of running processes that mention `marker` (a build's tag)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                line = handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if marker in line:
            found.append(line)
    return found


@pytest_twisted.ensureDeferred
async def test_push_and_close_during_a_build_and_the_build_timeout(
    reactor: Any, thread_pool: Any, tmp_path: Path, forge: ForgeRepo, docker_client: Any
) -> None:
    """A push during a build ends it (no build process, container or untagged image);
    a close during a build likewise; a build past its timeout fails with the reason."""
    stack = Stack(reactor, thread_pool, tmp_path, forge)
    configure(stack, RepoConfig(REPO, access="public"), build_timeout=6.0)
    await booted(stack)
    instance = stack.orchestrator.instance
    try:
        nonce = uuid.uuid4().hex
        slow = {"Dockerfile": SLOW_DOCKERFILE.replace("NONCE", nonce), "www/index.html": "x\n"}
        first = push(forge, 41, slow)
        assert (await stack.pull_request("opened", 41, first))[0] == 202
        for _ in range(300):
            logs = [entry.line for entry in stack.store.read_logs("pr-41-hello-world")]
            if any(f"slow-{nonce}" in line for line in logs):
                break
            await sleep(0.1)
        tag = f"prevu/{instance}/pr-41-hello-world:{first[:12]}"
        assert build_processes(tag), "the build runs"
        fast = {"Dockerfile": SLOW_DOCKERFILE.replace("sleep 40", "true"), "www/index.html": "y\n"}
        second = push(forge, 41, fast)
        assert (await stack.pull_request("synchronize", 41, second))[0] == 202
        await stack.until("pr-41-hello-world", "running", timeout=90)
        assert build_processes(tag) == []
        assert untagged_of(docker_client, instance) == []
        assert build_processes("busybox sleep 40") == [] or all(
            nonce not in line for line in build_processes("busybox sleep 40")
        )

        # Close during a build (convergence case 6).
        third = push(forge, 41, slow | {"www/index.html": "z\n"})
        assert (await stack.pull_request("synchronize", 41, third))[0] == 202
        await stack.until("pr-41-hello-world", "building", timeout=10)
        await sleep(1.0)
        assert (await stack.pull_request("closed", 41, third))[0] == 202
        await stack.until("pr-41-hello-world", "stopped")
        await stack.settled()
        await sleep(0.5)
        assert build_processes(f"prevu/{instance}/pr-41-hello-world:{third[:12]}") == []
        assert stack.leftovers(docker_client, "pr-41-hello-world") == []
        assert untagged_of(docker_client, instance) == []

        # The build timeout (6 s here) fails the preview with the reason.
        timed = push(forge, 42, slow)
        assert (await stack.pull_request("opened", 42, timed))[0] == 202
        for _ in range(300):
            record = stack.store.get("pr-42-hello-world")
            if record is not None and record.status == "failed":
                break
            await sleep(0.1)
        assert record is not None and record.status == "failed"
        assert record.error is not None and "timed out after 6s" in record.error
        assert build_processes(f"prevu/{instance}/pr-42-hello-world:{timed[:12]}") == []
    finally:
        await stack.shutdown()
        cleanup(docker_client, instance)


def test_start_up_finds_the_builder_with_prevus_own_docker_config(
    reactor: Any, tmp_path: Path
) -> None:
    """The builder found at start-up builds with `state_dir/docker` (empty credentials
    unless registry_auth_file names some), never the server user's; none: one line."""
    from prevu.config import Config, DockerConfig, ServerConfig
    from prevu.service import find_build_client

    auth = tmp_path / "auth.json"
    auth.write_text('{"auths": {"registry.example": {"auth": "eDp5"}}}')
    state = tmp_path / "state"
    config = Config(server=ServerConfig(state_dir=str(state)))
    builder = find_build_client(config, reactor)
    environment = builder.environment
    assert environment["DOCKER_CONFIG"] == str(state / "docker") == environment["HOME"]
    assert json.loads((state / "docker" / "config.json").read_text()) == {}
    assert set(environment) <= {"PATH", "DOCKER_BUILDKIT", "DOCKER_CONFIG", "HOME", "LANG",
                                "DOCKER_HOST"}  # fmt: skip
    assert os.access(builder.cli.argv[0], os.X_OK) or builder.cli.kind == "buildx"
    with_auth = evolve(config, docker=DockerConfig(registry_auth_file=str(auth)))
    find_build_client(with_auth, reactor)
    assert "registry.example" in (state / "docker" / "config.json").read_text()
    broken = tmp_path / "no-docker"
    with pytest.raises(SystemExit) as raised:
        find_build_client(evolve(config, docker=DockerConfig(cli=str(broken))), reactor)
    message = str(raised.value)
    assert "\n" not in message and str(broken) in message and "[docker] cli" in message


def test_healthz_names_the_builder() -> None:
    """/healthz details say which client builds."""
    from twisted.web.test.requesthelper import DummyRequest

    from prevu.config import Config
    from prevu.control.app import ControlApp

    app = ControlApp(config=Config(), builder="/usr/bin/docker with DOCKER_BUILDKIT=1")
    request = DummyRequest([b"healthz"])
    body = app.healthz(request)
    answer = json.loads(body if body else b"".join(request.written))
    assert answer["details"]["builder"] == "/usr/bin/docker with DOCKER_BUILDKIT=1"
