"""
Docker test fixtures, shared by every Docker test (registered in tests/conftest.py).

No image can be pulled, so images are built `FROM scratch` with Debian's static
busybox copied into the build context (`apt-get install busybox-static`).
Every object a test creates must carry `TEST_LABELS`; the session fixture
`docker_cleanup` removes this run's objects at its end, and at its start every
`prevu.test=true` object made over an hour ago (an earlier run was killed).

"Made" is not always the engine's `Created`: a BuildKit image whose steps were
all cached carries the `Created` of the cached step, however old, so an image
built a second ago can look a day old, and another run starting on the same
engine would remove it between its build and its container ("No such image").
An image counts from its last tagging too (`Metadata.LastTagTime`), a volume
from its `CreatedAt` (`made_at`).
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

BUSYBOX = "/bin/busybox"
TEST_SESSION = uuid.uuid4().hex[:12]
"""Several pytest runs may share one engine (helpers working in parallel): each
run labels its objects with its own session and removes only those."""
TEST_LABELS: Mapping[str, str] = {
    "prevu.managed": "true",
    "prevu.test": "true",
    "prevu.test.session": TEST_SESSION,
}
SESSION_FILTER = {"label": f"prevu.test.session={TEST_SESSION}"}
STALE_AFTER = 3600.0
NEVER = "0001-01-01T00:00:00"
"""The engine's zero time (Go's): an image never tagged has it as `LastTagTime`."""

HTTPD_DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
COPY www /www
CMD ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
"""

BusyboxContext = Callable[..., Path]


def make_busybox_context(
    directory: Path,
    index: str = "hello from prevu\n",
    dockerfile: str = HTTPD_DOCKERFILE,
    files: Mapping[str, str | bytes] | None = None,
) -> Path:
    """
    Write a build context to `directory`: `busybox`, `www/index.html` (= `index`),
    a `Dockerfile` (default: busybox httpd on port 8080 serving /www) and `files`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(BUSYBOX, directory / "busybox")
    (directory / "www").mkdir(exist_ok=True)
    (directory / "www" / "index.html").write_text(index)
    (directory / "Dockerfile").write_text(dockerfile)
    for name, content in (files or {}).items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return directory


def _seconds(value: Any) -> float:
    """Unix seconds of an engine time: a number or an RFC 3339 string (now if unreadable)."""
    if isinstance(value, int | float):
        return float(value)
    from datetime import datetime

    try:  # networks, volumes and tag times are RFC 3339 strings with nanoseconds
        return datetime.fromisoformat(str(value)[:26].rstrip("Z") + "+00:00").timestamp()
    except ValueError:
        return time.time()


def made_at(attrs: Mapping[str, Any], inspected: Mapping[str, Any] | None = None) -> float:
    """
    When the engine object described by `attrs` (a listing's entry) was made, in
    Unix seconds: its `Created` (`CreatedAt` for a volume), or for an image (its
    `inspect_image` as `inspected`) the later of `Created` and its last tagging,
    `Metadata.LastTagTime`: a fully cached BuildKit build keeps an old `Created`.
    A tagged image without a tag time is being built right now (the engine
    names it, then sets the time a moment later): infinity, never stale.
    """
    made = _seconds(attrs.get("Created", attrs.get("CreatedAt", 0)))
    if inspected is None:
        return made
    tagged = str((inspected.get("Metadata") or {}).get("LastTagTime") or NEVER)
    if not tagged.startswith(NEVER):
        return max(made, _seconds(tagged))
    names = [tag for tag in inspected.get("RepoTags") or () if tag != "<none>:<none>"]
    return math.inf if names else made


def remove_test_objects(client: Any, filters: Mapping[str, str], older_than: float = 0) -> None:
    """Remove containers, networks, images and volumes matching `filters` (and old enough)."""
    import docker.errors

    cutoff = time.time() - older_than
    api = client.api
    for container in api.containers(all=True, filters=dict(filters)):
        if made_at(container) <= cutoff:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                api.remove_container(container["Id"], force=True, v=True)
    for network in api.networks(filters=dict(filters)):
        if made_at(network) > cutoff:
            continue
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            details = api.inspect_network(network["Id"])
            for attached in details.get("Containers") or {}:
                with contextlib.suppress(docker.errors.APIError):
                    api.disconnect_container_from_network(attached, network["Id"], force=True)
            api.remove_network(network["Id"])
    for image in api.images(filters=dict(filters)):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            if made_at(image, api.inspect_image(image["Id"])) <= cutoff:
                api.remove_image(image["Id"], force=True)
    for volume in (api.volumes(filters=dict(filters)) or {}).get("Volumes") or []:
        if made_at(volume) > cutoff:
            continue  # another run's volume, maybe made but not yet mounted
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            api.remove_volume(volume["Name"], force=True)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A Docker SDK client for the local engine (DOCKER_HOST or the socket)."""
    import docker

    client = docker.from_env()
    client.ping()
    yield client
    client.close()


@pytest.fixture(scope="session", autouse=True)
def docker_cleanup() -> Iterator[None]:
    """Remove this session's Docker objects at its end (and killed runs' at its start)."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception:  # no engine: nothing to clean (Docker tests will fail on their own)
        yield
        return
    try:
        remove_test_objects(client, {"label": "prevu.test=true"}, older_than=STALE_AFTER)
        yield
        remove_test_objects(client, SESSION_FILTER)
    finally:
        client.close()


@pytest.fixture
def busybox_context(tmp_path: Path) -> BusyboxContext:
    """A factory: `busybox_context(index="...", dockerfile=..., files={...})` → context dir."""
    counter = iter(range(1_000_000))

    def make(**kwargs: Any) -> Path:
        return make_busybox_context(tmp_path / f"context-{next(counter)}", **kwargs)

    return make
