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
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

BUSYBOX = "/bin/busybox"
TEST_LABELS: Mapping[str, str] = {"prevu.managed": "true", "prevu.test": "true"}
TEST_FILTER = {"label": "prevu.test=true"}

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


def remove_test_objects(client: Any) -> None:
    """Remove every container, network, image and volume labelled prevu.test=true."""
    import docker.errors

    for container in client.containers.list(all=True, filters=TEST_FILTER):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
    for network in client.networks.list(filters=TEST_FILTER):
        try:
            network.reload()
            for attached in network.attrs.get("Containers") or {}:
                with contextlib.suppress(docker.errors.APIError):
                    network.disconnect(attached, force=True)
            network.remove()
        except docker.errors.NotFound:
            pass
    for image in client.images.list(filters=TEST_FILTER):
        with contextlib.suppress(docker.errors.NotFound):
            client.images.remove(image.id, force=True)
    for volume in client.volumes.list(filters=TEST_FILTER):
        with contextlib.suppress(docker.errors.NotFound):
            volume.remove(force=True)


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
    """At the end of the session, remove everything labelled prevu.test=true."""
    yield
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception:
        return
    try:
        remove_test_objects(client)
    finally:
        client.close()


@pytest.fixture
def busybox_context(tmp_path: Path) -> BusyboxContext:
    """A factory: `busybox_context(index="...", dockerfile=..., files={...})` → context dir."""
    counter = iter(range(1_000_000))

    def make(**kwargs: Any) -> Path:
        return make_busybox_context(tmp_path / f"context-{next(counter)}", **kwargs)

    return make
