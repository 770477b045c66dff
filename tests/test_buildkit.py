"""BuildKit builds through the Docker CLI, on the real engine (busybox images FROM scratch)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, ensureDeferred

from prevu.adapters.buildkit import (
    BuilderCli,
    BuildKitCli,
    CliBuild,
    _kill_group,
    build_argv,
    candidates,
    clean_environment,
    explain_failure,
    find_builder,
    prepare_docker_config,
    syntax_frontend,
)
from prevu.errors import DockerError
from tests.support.docker import TEST_LABELS, BusyboxContext
from tests.support.timeouts import sleep, within

pytestmark = pytest.mark.docker

CACHE_MOUNT_DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN --mount=type=cache,target=/cache \
    ["/bin/busybox", "sh", "-c", "echo x >> /cache/n; /bin/busybox wc -l /cache/n"]
COPY www /www
CMD ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
"""

MULTI_STAGE_DOCKERFILE = """\
FROM scratch AS base
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "echo base > /stage"]

FROM base AS dev
RUN ["/bin/busybox", "sh", "-c", "echo dev > /stage"]

FROM base AS final
RUN ["/bin/busybox", "sh", "-c", "echo final > /stage"]
"""

SECRET_DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN --mount=type=secret,id=token \
    ["/bin/busybox", "sh", "-c", "echo secret-length=$(/bin/busybox wc -c < /run/secrets/token)"]
"""

SLOW_DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
COPY www /www
RUN ["/bin/busybox", "sh", "-c", "echo slow-step-started; /bin/busybox sleep 60"]
"""


def unique_tag() -> str:
    return f"prevu-test-bk-{uuid.uuid4().hex[:10]}:latest"


@pytest.fixture
def docker_config(tmp_path: Path) -> str:
    return prepare_docker_config(str(tmp_path / "docker-config"))


@pytest.fixture
def builder(reactor: Any, docker_config: str) -> BuildKitCli:
    environment = clean_environment(docker_config, os.environ.get("DOCKER_HOST"))
    cli = pytest_twisted.blockon(ensureDeferred(find_builder(reactor, "auto", environment)))
    return BuildKitCli(reactor, cli, environment)


def spec(context: Path, **kwargs: Any) -> CliBuild:
    defaults: dict[str, Any] = {"tag": unique_tag(), "labels": dict(TEST_LABELS)}
    return CliBuild(context=str(context), **{**defaults, **kwargs})


# --- pure parts ----------------------------------------------------------------------------


def test_build_argv_labels_are_metadata_and_secrets_are_paths() -> None:
    """Labels, args, target, secrets and cache sources become flags, in a stable order."""
    cli = BuilderCli(("/usr/bin/docker",), "engine")
    argv = build_argv(
        cli,
        CliBuild(
            context="/w",
            tag="t:1",
            labels={"b": "2", "a": "1"},
            args={"X": "y"},
            target="final",
            secrets={"token": "/run/s/token"},
            cache_from=("cache:repo",),
            inline_cache=True,
        ),
        "/tmp/iid",
    )
    assert argv == [
        "/usr/bin/docker", "build", "--progress=plain", "--iidfile", "/tmp/iid",
        "--file", "/w/Dockerfile", "--tag", "t:1",
        "--label", "a=1", "--label", "b=2",
        "--build-arg", "X=y", "--build-arg", "BUILDKIT_INLINE_CACHE=1",
        "--target", "final",
        "--secret", "id=token,src=/run/s/token",
        "--cache-from", "cache:repo",
        "/w",
    ]  # fmt: skip
    buildx = build_argv(BuilderCli(("docker", "buildx"), "buildx"), CliBuild("/w", "t"), "/i")
    assert buildx[:3] == ["docker", "buildx", "build"] and "--load" in buildx


def test_clean_environment_holds_nothing_of_prevus_own() -> None:
    """Only PATH, DOCKER_BUILDKIT, prevu's DOCKER_CONFIG/HOME, LANG and a configured host."""
    environment = clean_environment("/state/docker", "unix:///x.sock", path="/usr/bin")
    assert environment == {
        "PATH": "/usr/bin",
        "DOCKER_BUILDKIT": "1",
        "DOCKER_CONFIG": "/state/docker",
        "HOME": "/state/docker",
        "LANG": "C.UTF-8",
        "DOCKER_HOST": "unix:///x.sock",
    }


def test_prepare_docker_config_is_private_and_empty(tmp_path: Path) -> None:
    """prevu's DOCKER_CONFIG holds no credentials unless registry_auth_file gives some."""
    directory = prepare_docker_config(str(tmp_path / "cfg"))
    assert json.loads(Path(directory, "config.json").read_text()) == {}
    assert os.stat(directory).st_mode & 0o077 == 0
    auth = tmp_path / "auth.json"
    auth.write_text('{"auths": {"registry.example": {"auth": "eDp5"}}}')
    prepare_docker_config(str(tmp_path / "cfg"), str(auth))
    assert "registry.example" in Path(directory, "config.json").read_text()
    assert os.stat(Path(directory, "config.json")).st_mode & 0o077 == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("# syntax=docker/dockerfile:1\nFROM scratch\n", "docker/dockerfile:1"),
        ("\n#syntax = example/frontend@sha256:ab\nFROM x\n", "example/frontend@sha256:ab"),
        ("# a comment\n# syntax=x/y\nFROM a\n", "x/y"),
        ("FROM scratch\n# syntax=x/y\n", None),
        ("FROM scratch\n", None),
    ],
)
def test_syntax_frontend(text: str, expected: str | None) -> None:
    """Only a `# syntax=` directive before the first instruction counts."""
    assert syntax_frontend(text) == expected


def test_explain_failure() -> None:
    """An unpullable frontend is said plainly; otherwise BuildKit's last error line."""
    dockerfile = "# syntax=docker/dockerfile:1.7\nFROM scratch\n"
    raw = ["#1 resolve image config for docker.io/docker/dockerfile:1.7", "ERROR: failed"]
    assert "cannot pull" in explain_failure(dockerfile, raw, "exited 1")
    assert explain_failure("FROM x\n", ["#5 ...", "ERROR: boom", "#6"], "exited 1") == "boom"
    assert explain_failure("FROM x\n", ["#5 ERROR: executor failed", "x"], "exited 1") == (
        "executor failed"
    )
    assert explain_failure("FROM x\n", ["last words", ""], "exited 1") == (
        "docker build exited 1: last words"
    )
    assert explain_failure("FROM x\n", [], "exited 1") == "docker build exited 1"


def test_candidates_follow_path_then_debian_client(tmp_path: Path) -> None:
    """`auto` tries each docker on PATH in order, once each, then /usr/bin/docker."""
    first, second = tmp_path / "a", tmp_path / "b"
    for directory in (first, second):
        directory.mkdir()
        (directory / "docker").write_text("#!/bin/sh\nexit 1\n")
        (directory / "docker").chmod(0o755)
    found = candidates("auto", f"{first}:{second}:{first}")
    assert found[:2] == [str(first / "docker"), str(second / "docker")]
    assert len(found) == len(set(found))
    assert candidates("/opt/docker") == ["/opt/docker"]


# --- the real engine -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_find_builder_skips_a_client_that_cannot_and_names_what_it_tried(
    reactor: Any, docker_config: str, tmp_path: Path
) -> None:
    """A client that fails the probe is passed over; with none, one line says what was tried."""
    broken = tmp_path / "bin"
    broken.mkdir()
    (broken / "docker").write_text("#!/bin/sh\necho 'buildx component is missing' >&2\nexit 1\n")
    (broken / "docker").chmod(0o755)
    environment = clean_environment(docker_config, os.environ.get("DOCKER_HOST"))
    environment["PATH"] = f"{broken}:{environment['PATH']}"
    cli = await within(find_builder(reactor, "auto", environment), 60)
    assert cli.argv[0] != str(broken / "docker")
    with pytest.raises(DockerError) as raised:
        await within(find_builder(reactor, str(broken / "docker"), environment), 30)
    assert str(broken / "docker") in str(raised.value) and "[docker] cli" in str(raised.value)


@pytest_twisted.ensureDeferred
async def test_cache_mount_builds_and_labels_are_not_steps(
    builder: BuildKitCli, busybox_context: BusyboxContext, docker_client: Any
) -> None:
    """`RUN --mount=type=cache` builds; labels are on the image and add no build step."""
    lines: list[str] = []
    build = spec(
        busybox_context(dockerfile=CACHE_MOUNT_DOCKERFILE), labels={**TEST_LABELS, "x": "1"}
    )
    image = await within(builder.build(build, lines.append), 120)
    assert image.startswith("sha256:")
    attrs = docker_client.api.inspect_image(image)
    assert attrs["Config"]["Labels"]["x"] == "1"
    steps = [line for line in lines if "[" in line and "/" in line and "] " in line]
    assert not any("LABEL" in line for line in lines), lines
    assert any("RUN --mount=type=cache" in line for line in steps)


@pytest_twisted.ensureDeferred
async def test_multi_stage_target_leaves_only_the_tagged_image(
    builder: BuildKitCli, busybox_context: BusyboxContext, docker_client: Any
) -> None:
    """`--target dev` builds that stage; BuildKit tags one image and leaves no stage image."""
    before = {image["Id"] for image in docker_client.api.images(all=True)}
    context = busybox_context(dockerfile=MULTI_STAGE_DOCKERFILE)
    build = spec(context, target="dev")
    image = await within(builder.build(build, lambda line: None), 120)
    new = {i["Id"] for i in docker_client.api.images(all=True)} - before
    session = TEST_LABELS["prevu.test.session"]
    labels = {i: docker_client.api.inspect_image(i)["Config"]["Labels"] or {} for i in new}
    ours = [i for i in new if labels[i].get("prevu.test.session") == session]
    assert image in new
    assert ours == [image]
    assert all(docker_client.api.inspect_image(i)["RepoTags"] for i in ours)
    output = docker_client.containers.run(
        build.tag, ["/bin/busybox", "cat", "/stage"], remove=True, labels=dict(TEST_LABELS)
    )
    assert output == b"dev\n"


@pytest_twisted.ensureDeferred
async def test_build_secret_is_readable_in_a_step_and_nowhere_else(
    builder: BuildKitCli, busybox_context: BusyboxContext, docker_client: Any, tmp_path: Path
) -> None:
    """A BuildKit secret reaches its RUN step; not the image's history, config or labels."""
    secret_value = f"s3cr3t-{uuid.uuid4().hex}"
    secret_file = tmp_path / "token"
    secret_file.write_text(secret_value)
    lines: list[str] = []
    # A secret is not part of the cache key: a fresh step text makes the RUN execute.
    dockerfile = SECRET_DOCKERFILE.replace("echo secret", f"echo {uuid.uuid4().hex} secret")
    build = spec(busybox_context(dockerfile=dockerfile), secrets={"token": str(secret_file)})
    image = await within(builder.build(build, lines.append), 120)
    assert any(f"secret-length={len(secret_value)}" in line for line in lines), lines
    assert not any(secret_value in line for line in lines)
    history = json.dumps(docker_client.api.history(image))
    inspect = json.dumps(docker_client.api.inspect_image(image))
    assert secret_value not in history and secret_value not in inspect


@pytest_twisted.ensureDeferred
async def test_cancel_ends_the_build_process_group_and_tags_nothing(
    builder: BuildKitCli, busybox_context: BusyboxContext, docker_client: Any, reactor: Any
) -> None:
    """Cancelling during a slow RUN ends the CLI's process group; no image gets the tag."""
    started: list[str] = []
    build = spec(busybox_context(dockerfile=SLOW_DOCKERFILE))
    running = ensureDeferred(builder.build(build, started.append))
    for _ in range(300):
        if any("slow-step-started" in line for line in started):
            break
        await sleep(0.1)
    assert any("slow-step-started" in line for line in started), started
    running.cancel()
    with pytest.raises(CancelledError):
        await within(running, 30)
    assert docker_client.api.images(name=build.tag.split(":")[0]) == []
    processes = os.popen("ps -eo args").read()
    assert build.tag not in processes


@pytest_twisted.ensureDeferred
async def test_cancel_at_once_ends_the_build_before_its_client_made_a_group(
    builder: BuildKitCli, busybox_context: BusyboxContext, docker_client: Any, reactor: Any
) -> None:
    """Cancelled in the turn it started (a push superseding it at once), before the child
    ran setsid: the child is killed, so the build ends at once. Before, the TERM went to a
    group not made yet (or to the fork of prevu, which caught it) and was lost; the KILL
    5 s later cut the client off mid-build, and a build near its end was tagged by the
    engine after prevu untagged it (a closed preview's image left behind, seen under load)."""
    build = spec(busybox_context(dockerfile=SLOW_DOCKERFILE))
    running = ensureDeferred(builder.build(build, lambda line: None))
    started = reactor.seconds()
    running.cancel()
    with pytest.raises(CancelledError):
        await within(running, 30)
    assert reactor.seconds() - started < 4.0, "ended by the KILL after the grace, not the TERM"
    await sleep(1.0)
    assert docker_client.api.images(name=build.tag.split(":")[0]) == []
    assert build.tag not in os.popen("ps -eo args").read()


def test_kill_group_kills_a_child_that_has_no_group_yet() -> None:
    """A child still in prevu's process group (before its setsid, so it started no
    client; maybe a fork of prevu, whose SIGTERM handler it still has) is killed."""
    child = subprocess.Popen(["/bin/sleep", "30"])
    try:
        _kill_group(child.pid, signal.SIGTERM)
        assert child.wait(5) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()


@pytest_twisted.ensureDeferred
async def test_timeout_fails_the_build_with_the_reason(
    builder: BuildKitCli, busybox_context: BusyboxContext
) -> None:
    """A build past its timeout fails with 'timed out after Ns'."""
    build = spec(busybox_context(dockerfile=SLOW_DOCKERFILE), timeout=3)
    with pytest.raises(DockerError) as raised:
        await within(builder.build(build, lambda line: None), 60)
    assert "timed out after 3s" in str(raised.value)


@pytest_twisted.ensureDeferred
async def test_failing_step_names_the_error(
    builder: BuildKitCli, busybox_context: BusyboxContext
) -> None:
    """A RUN that fails gives BuildKit's error line as the reason."""
    dockerfile = 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "false"]\n'
    with pytest.raises(DockerError) as raised:
        await within(builder.build(spec(busybox_context(dockerfile=dockerfile)), len), 60)
    assert "executor failed running [/bin/busybox false]: exit code: 1" in str(raised.value)
