"""
The Docker labels prevu puts on what it creates (SPEC §5), and reading them back.

Pure core. Labels are the source of truth for what runs: after a restart the
orchestrator rebuilds its routes from them. `prevu.instance` scopes objects to
one prevu (one `state_dir`), so that two prevus, or parallel test runs, sharing
an engine never take each other's containers for orphans.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from attrs import frozen

from prevu.lifecycle import Deployment, Revision
from prevu.ports import ContainerInfo

MANAGED = "prevu.managed"
INSTANCE = "prevu.instance"
PREVIEW = "prevu.preview"
REPO = "prevu.repo"
NUMBER = "prevu.number"
SHA = "prevu.sha"
HOST = "prevu.host"
PORT = "prevu.port"
BRANCH = "prevu.branch"
SERIAL = "prevu.serial"
FORGE = "prevu.forge"
IMAGE = "prevu.image"
SERVICE = "prevu.service"
"""Read only: the service a container runs (absent on single-service previews: "app")."""
PROJECT = "prevu.compose.project"
"""Compose previews: the Compose project of a container or built image (docs/compose.md)."""
EXPOSE = "prevu.expose"
"""Compose previews: on the exposed container, the other exposed services, `api:3000,...`."""
PART = "prevu.part"
"""Compose previews: on every container but the exposed one, "keep" or "revision"."""


INSTANCE_MAX_LENGTH = 32
_INSTANCE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def instance_problem(value: str) -> str | None:
    """
    Why `value` cannot be an instance id (`[server] instance`, `state_dir/instance`),
    or None when it can: it goes into labels and object names, so 1 to 32
    lowercase letters, digits and `-`, starting with a letter or digit.
    """
    if not value:
        return "must not be empty"
    if len(value) > INSTANCE_MAX_LENGTH:
        return f"at most {INSTANCE_MAX_LENGTH} characters, got {len(value)}"
    if not _INSTANCE.match(value):
        return f"only lowercase letters, digits and '-' (not first), got {value!r}"
    return None


@frozen
class Identity:
    """Which preview (and revision) an object belongs to."""

    instance: str
    preview: str
    repo: str
    number: int
    forge: str

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> Identity:
        """The identity that `labels()` produced (missing labels read as empty or 0)."""
        number = labels.get(NUMBER, "0")
        return cls(
            labels.get(INSTANCE, ""),
            labels.get(PREVIEW, ""),
            labels.get(REPO, ""),
            int(number) if number.isdigit() else 0,
            labels.get(FORGE, ""),
        )

    def labels(self) -> dict[str, str]:
        """The labels of every object of this preview (images, networks, containers)."""
        return {
            MANAGED: "true",
            INSTANCE: self.instance,
            PREVIEW: self.preview,
            REPO: self.repo,
            NUMBER: str(self.number),
            FORGE: self.forge,
        }

    def container_labels(
        self, revision: Revision, host: str, port: int, image: str
    ) -> dict[str, str]:
        """The labels of a preview container: enough to route it again after a restart."""
        return {
            **self.labels(),
            SHA: revision.sha,
            BRANCH: revision.branch,
            SERIAL: str(revision.serial),
            HOST: host,
            PORT: str(port),
            IMAGE: image,
        }


def owned(labels: Mapping[str, str], instance: str) -> str | None:
    """The preview id of an object of this instance, or None when it is not ours."""
    if labels.get(INSTANCE) != instance:
        return None
    return labels.get(PREVIEW) or None


def deployment_of(
    container: ContainerInfo, others: Iterable[ContainerInfo] = ()
) -> Deployment | None:
    """
    The Deployment a labelled container stands for, or None when labels are
    missing. A Compose preview's `prevu.expose` services are looked up among
    `others` (same `prevu.compose.project`, by Compose service label).
    """
    labels = container.labels
    try:
        revision = Revision(labels[SHA], labels.get(BRANCH, ""), int(labels.get(SERIAL, "0")))
        port = int(labels[PORT])
    except (KeyError, ValueError):
        return None
    address = next((ip for ip in container.networks.values() if ip), "")
    image = labels.get(IMAGE) or container.image
    extra = []
    for item in filter(None, labels.get(EXPOSE, "").split(",")):
        service, _, number = item.partition(":")
        for other in others:
            if (
                other.labels.get(PROJECT) == labels.get(PROJECT)
                and other.labels.get("com.docker.compose.service") == service
                and number.isdigit()
            ):
                ip = next((ip for ip in other.networks.values() if ip), "")
                if ip:
                    extra.append((service, ip, int(number)))
    return Deployment(revision, container.id, image, address or "0.0.0.0", port, tuple(extra))
