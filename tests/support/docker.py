"""
Docker test fixtures, shared by every Docker test (registered in tests/conftest.py).

No image can be pulled, so images are built `FROM scratch` with Debian's static
busybox copied into the build context (`apt-get install busybox-static`).
Every object a test creates must carry `TEST_LABELS`; the session fixture
`docker_cleanup` removes everything labelled `prevu.test=true` at the end (and
at the start, in case an earlier run was killed).
"""

from __future__ import annotations

import contextlib
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


def _created(attrs: Mapping[str, Any]) -> float:
    created = attrs.get("Created", 0)
    if isinstance(created, int | float):
        return float(created)
    from datetime import datetime

    try:  # networks report an RFC 3339 string with nanoseconds
        return datetime.fromisoformat(str(created)[:26].rstrip("Z") + "+00:00").timestamp()
    except ValueError:
        return time.time()


def remove_test_objects(client: Any, filters: Mapping[str, str], older_than: float = 0) -> None:
    """Remove containers, networks, images and volumes matching `filters` (and old enough)."""
    import docker.errors

    cutoff = time.time() - older_than
    api = client.api
    for container in api.containers(all=True, filters=dict(filters)):
        if _created(container) <= cutoff:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                api.remove_container(container["Id"], force=True, v=True)
    for network in api.networks(filters=dict(filters)):
        if _created(network) > cutoff:
            continue
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            details = api.inspect_network(network["Id"])
            for attached in details.get("Containers") or {}:
                with contextlib.suppress(docker.errors.APIError):
                    api.disconnect_container_from_network(attached, network["Id"], force=True)
            api.remove_network(network["Id"])
    for image in api.images(filters=dict(filters)):
        if _created(image) <= cutoff:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                api.remove_image(image["Id"], force=True)
    for volume in (api.volumes(filters=dict(filters)) or {}).get("Volumes") or []:
        # volumes name their time `CreatedAt`; without the cutoff a session's start-up
        # sweep removed a concurrent session's volume in the moment no container held it
        if _created({"Created": volume.get("CreatedAt", 0)}) > cutoff:
            continue
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
