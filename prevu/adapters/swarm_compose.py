"""
Compose previews on Docker Swarm (issue 19, docs/scale-out.md, docs/compose.md):
the build and start of a Compose `AppModel` for `SwarmRuntime`.

The model is the one prevu checks on one host (`ComposeRuntime.load_compose`:
the same allowlist, the same refusals), plus one refusal of Swarm's own
(`prevu.swarm.compose.swarm_refusal`: bind mounts). Per preview:

- every service with a `build` is built where prevu runs (BuildKit), pushed
  to `[swarm] registry` as `<registry>/prevu-<instance>/<preview>:<service>-<sha12>-<serial>`
  and run by digest; image-only services are pulled by each node;
- every Compose service is one Swarm service on the preview's overlay, with
  the network alias of its Compose service name (`prevu.swarm.compose`);
- the kept services (image-only ones and `[compose] keep`) are
  `<network>-keep-<service>`: left running across pushes while their spec
  (digest label `prevu.swarm.spec`) is the same, else recreated on the node
  their task ran on; one with a volume is pinned (`node.id==`) to the node of
  its first task once it runs (its volumes live there);
- the others are `<network>-<sha12>-<serial>-<service>`, one set per
  revision next to the old one; the exposed one carries the deployment
  labels, the rest `prevu.part` and `prevu.compose.project` as on one host.
  Discarding the old exposed service removes its revision's services.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import docker.errors

from prevu import labels as lb
from prevu.adapters.compose_runtime import build_compose_service
from prevu.appmodel import AppModel
from prevu.compose.write import DoesNotFit, service_host, split_limits, urls
from prevu.errors import DockerError
from prevu.ports import LogSink
from prevu.routing import Upstream
from prevu.runtime import Built, Deployed, Release
from prevu.swarm.compose import (
    SPEC_LABEL,
    compose_service_spec,
    spec_digest,
    swarm_name,
    swarm_refusal,
)
from prevu.swarm.spec import pinned
from prevu.swarm.spec import service_state as read_state

if TYPE_CHECKING:
    from prevu.adapters.swarm_runtime import SwarmRuntime

PER_REVISION = frozenset({"PREVU_SHA", "PREVU_BRANCH"})
"""Values not given to kept services: they would recreate them on every push."""


def untagged(reference: str) -> str:
    """`host/repo:tag@sha256:...` -> `host/repo@sha256:...` (the same for every tag)."""
    named, at, digest = reference.partition("@")
    if not at:
        return reference
    path, _, last = named.rpartition("/")
    return f"{path}/{last.partition(':')[0]}@{digest}"


async def build_compose(rt: SwarmRuntime, model: AppModel, release: Release, log: LogSink) -> Built:
    """Build and push every built service; DockerError on a failure or a Swarm refusal."""
    spec = model.compose
    assert spec is not None
    refusal = swarm_refusal(spec.app)
    if refusal is not None:
        raise DockerError("compose", refusal)
    revision = release.revision
    project = f"{rt.network_of(release.preview)}-{revision.short}-{revision.serial}"
    images: dict[str, str] = {}
    for service in model.services:
        # A kept service's image carries no per-revision label: the same
        # sources give the same image (and digest), so its service is left running.
        labels = (
            {**release.labels, lb.PROJECT: f"{rt.network_of(release.preview)}-keep"}
            if service.name in spec.keep
            else {**release.labels, lb.SHA: revision.sha, lb.PROJECT: project}
        )
        image = await build_compose_service(rt.inner, release, service, labels, log)
        if service.build is not None:
            await rt.push(image, rt.reference(release, service.name), log)
        images[service.name] = image
    return Built(release, model, images)


async def start_compose(rt: SwarmRuntime, built: Built) -> Deployed:
    """
    Start the kept services (or leave them), then this revision's services;
    wait until each runs with an address. The Deployed's containers are the
    services' ids per Compose service. DockerError when one fails.
    """
    release, model = built.release, built.model
    spec = model.compose
    assert spec is not None
    network_id = await rt._network(release)
    base = rt.network_of(release.preview)
    revision = release.revision
    try:
        memory, cpus = split_limits(
            spec.app.services, rt.compose_memory or rt.inner.memory, rt.inner.cpus
        )
    except DoesNotFit as error:
        raise DockerError("compose", f"the preview does not fit: {error}") from None
    identity = lb.Identity.from_labels(release.labels)
    exposed = {
        name: release.env.get("PREVU_URL", "").replace(
            release.host, service_host(name, release.host), 1
        )
        for name in spec.expose
    }
    exposed[model.exposed] = release.env.get("PREVU_URL", "")
    volumes = {v: f"{base}-{v}" for v in spec.app.volumes}
    project = f"{base}-{revision.short}-{revision.serial}"
    ids: dict[str, str] = {}
    ordered = sorted(spec.app.services, key=lambda s: s.name not in spec.keep)
    for service in ordered:
        keep = service.name in spec.keep
        part_project = f"{base}-keep" if keep else project
        name = swarm_name(part_project, service.name)
        labels = {**rt._labels(release.labels), lb.PROJECT: part_project}
        if service.name == model.exposed and not keep:
            labels.update(
                identity.container_labels(
                    revision, release.host, model.front.port, built.images[service.name]
                )
            )
            expose = ",".join(f"{n}:{p}" for n, p in spec.expose.items())
            if expose:
                labels[lb.EXPOSE] = expose
        else:
            labels[lb.PART] = "keep" if keep else "revision"
        labels[lb.SERVICE] = service.name
        prevu_env = {k: v for k, v in release.env.items() if not keep or k not in PER_REVISION}
        image = built.images[service.name]
        reference = untagged(rt._digests.get(image, "")) or (
            rt.reference(release, service.name) if service.build is not None else image
        )
        holder = await _holder(rt, name) if keep else None
        service_spec = compose_service_spec(
            service,
            name=name,
            image=reference,
            network=network_id,
            labels=labels,
            env={**service.environment, **release.run_env, **prevu_env, **urls(exposed)},
            memory=memory[service.name],
            cpus=cpus[service.name],
            pids=rt.inner.pids,
            volumes=volumes,
            volume_labels=rt._labels(release.labels),
            constraints=rt.swarm.constraints,
            restart_limit=rt.inner.restart_limit,
            stop_grace=rt.inner.stop_timeout,
        )
        digest = spec_digest(service_spec)
        if keep:
            service_spec["Labels"][SPEC_LABEL] = digest
            constraints = pinned(rt.swarm.constraints, holder)
            service_spec["TaskTemplate"]["Placement"]["Constraints"] = list(constraints)
        try:
            created = await _create(rt, service_spec, release.preview, digest if keep else "")
        except BaseException:
            await _remove_revision(rt, ids, spec.keep)
            raise
        ids[service.name] = created
    endpoints: dict[str, Upstream] = {}
    ports = {model.front.name: model.front.port, **spec.expose}
    stateful = {s.name for s in spec.app.services if any(m.kind == "volume" for m in s.mounts)}
    try:
        for service_name, service_id in ids.items():
            state = await rt._wait_running(service_id, network_id)
            if service_name in ports:
                endpoints[service_name] = Upstream(state.address, ports[service_name])
            if service_name in spec.keep and service_name in stateful and state.node:
                await _pin(rt, service_id, state.node)
    except BaseException:
        await _remove_revision(rt, ids, spec.keep)
        raise
    return Deployed(
        preview=release.preview,
        host=release.host,
        exposed=model.front.name,
        containers=ids,
        images=dict(built.images),
        endpoints=endpoints,
        health=model.front.health,
    )


async def _remove_revision(rt: SwarmRuntime, ids: dict[str, str], keep: tuple[str, ...]) -> None:
    """After a failed start: remove this revision's services (kept ones stay); errors logged."""
    try:
        await rt._remove_services([i for name, i in ids.items() if name not in keep])
    except DockerError as error:
        rt.log.warn("could not remove a failed revision's services: {error}", error=str(error))


async def _pin(rt: SwarmRuntime, service: str, node: str) -> None:
    """
    Pin a running stateful service to `node`, where its task runs (its volumes
    live there): Swarm leaves a task whose node meets the new constraints
    running. Nothing when already pinned.
    """

    def pin() -> None:
        api = rt.client.api
        info = api.inspect_service(service)
        spec = info["Spec"]
        template = dict(spec["TaskTemplate"])
        placement = dict(template.get("Placement") or {})
        constraints = list(placement.get("Constraints") or ())
        if any(c.replace(" ", "").startswith("node.id==") for c in constraints):
            return
        placement["Constraints"] = list(pinned(constraints, node))
        template["Placement"] = placement
        api.update_service(
            service,
            version=info["Version"]["Index"],
            task_template=template,
            name=spec["Name"],
            labels=spec.get("Labels"),
            mode=spec.get("Mode"),
            endpoint_spec=spec.get("EndpointSpec"),
            fetch_current_spec=False,
        )

    await rt._call("service update", pin)


async def _holder(rt: SwarmRuntime, name: str) -> str | None:
    """The node whose task of service `name` ran last (None: no such service)."""
    try:
        tasks = await rt._tasks(name)
    except DockerError:
        return None
    return read_state(tasks, "").node or None


async def _create(rt: SwarmRuntime, spec: dict[str, Any], preview: str, keep: str) -> str:
    """
    Create the service of `spec` (an old one of the same name of this
    preview is replaced), or with `keep` (its spec digest) leave a kept
    service whose digest is the same. Its id.
    """
    name = spec["Name"]

    def create() -> str:
        api = rt.client.api
        with contextlib.suppress(docker.errors.NotFound):
            existing = api.inspect_service(name)
            labels = (existing.get("Spec") or {}).get("Labels") or {}
            if lb.owned(labels, rt.instance) != preview:
                raise DockerError("run", f"service {name} exists and is not this preview's")
            if keep and labels.get(SPEC_LABEL) == keep:
                return str(existing["ID"])
            api.remove_service(existing["ID"])
        created = api.create_service(
            spec["TaskTemplate"],
            name=name,
            labels=spec["Labels"],
            mode=spec["Mode"],
            endpoint_spec=spec["EndpointSpec"],
        )
        return str(created["ID"])

    return await rt._call("service create", create)


async def discard_revisions(rt: SwarmRuntime, services: list[str]) -> list[str]:
    """
    The services to remove for `services` (ids) of a discard: a kept service
    is left (`remove` takes it), an exposed service of a Compose revision
    takes its revision's other services along (and their local images).
    """
    projects: set[str] = set()
    plain: list[str] = []
    for service in services:

        def inspect(service: str = service) -> dict[str, str]:
            try:
                info = rt.client.api.inspect_service(service)
            except docker.errors.NotFound:
                return {}
            return dict((info.get("Spec") or {}).get("Labels") or {})

        labels = await rt._call("service inspect", inspect)
        if labels.get(lb.PART) == "keep":
            continue
        plain.append(service)
        if labels.get(lb.PROJECT) and not labels.get(lb.PART):
            projects.add(labels[lb.PROJECT])
    if not projects:
        return plain
    for found in await rt._services():
        labels = (found.get("Spec") or {}).get("Labels") or {}
        if labels.get(lb.PROJECT) in projects and labels.get(lb.PART) == "revision":
            plain.append(str(found["ID"]))
    managed = await rt.inner.docker.list_managed()
    for image in managed.images:
        if image.labels.get(lb.PROJECT) in projects and image.labels.get(lb.INSTANCE) == (
            rt.instance
        ):
            with contextlib.suppress(DockerError):
                await rt.inner.docker.remove_image(image.id)
    return plain
