"""
The app model: what a revision of a repository runs, as one frozen, normalized value.

Pure core (attrs only, no I/O). A model is a tuple of services; each service
has an image to pull or a build (context, Dockerfile, args, target), a
command, env, an optional health path, named volumes, resource limits and,
when it is exposed, the port prevu routes to. Exactly one service is exposed
today (the preview's host goes to it).

The repository's files choose the model per revision: `single_dockerfile`
turns a checkout plus its `.prevu.toml` (`RepoSettings`) into a one-service
model; a Compose file will be a second producer of the same value, not a
second runtime. Runtimes (`prevu.runtime.Runtime`) run models. Two models
compare equal exactly when they would run the same thing, so "the model
changed" is a plain `!=`, and such a revision is a normal switch.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping, Sequence

from attrs import field, frozen, validators

from prevu.compose.check import ComposeApp
from prevu.repoconfig import ComposeSettings, RepoSettings

APP = "app"
"""The name of the one service of a single-Dockerfile app."""


def _mapping(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return dict(sorted((value or {}).items()))


def _strings(value: Sequence[str] | None) -> tuple[str, ...]:
    return tuple(value or ())


def _ports(value: Mapping[str, int]) -> Mapping[str, int]:
    return dict(sorted(value.items()))


def _services(value: Iterable[Service]) -> tuple[Service, ...]:
    return tuple(value)


@frozen
class BuildSpec:
    """
    How to build a service's image: `context` (absolute directory),
    `dockerfile` (relative to the context), build `args`, and the multi-stage
    `target` (None: the last stage).
    """

    context: str = field(validator=validators.min_len(1))
    dockerfile: str = "Dockerfile"
    args: Mapping[str, str] = field(factory=dict, converter=_mapping)
    target: str | None = None


@frozen
class Service:
    """
    One service of an app. Exactly one of `image` (a reference to pull or
    use) and `build` is set. `port` is where it listens when exposed.
    `memory` is bytes, `cpus` whole or fractional CPUs; None means the
    server's limit.
    """

    name: str = field(validator=validators.matches_re(r"^[a-z0-9][a-z0-9_.-]{0,62}$"))
    image: str | None = None
    build: BuildSpec | None = None
    command: tuple[str, ...] | None = field(default=None)
    env: Mapping[str, str] = field(factory=dict, converter=_mapping)
    health: str | None = None
    volumes: tuple[str, ...] = field(default=(), converter=_strings)
    """Container paths that get a named volume of the preview (kept across pushes)."""
    port: int = field(default=8080, validator=[validators.ge(1), validators.le(65535)])
    memory: int | None = None
    cpus: float | None = None

    def __attrs_post_init__(self) -> None:
        if (self.image is None) == (self.build is None):
            raise ValueError(f"service {self.name}: exactly one of image and build")


def _argv(value: Sequence[str] | None) -> tuple[str, ...] | None:
    return tuple(value) if value else None


@frozen
class ComposeSpec:
    """
    What a Compose app runs beyond its services' summary: the checked model
    (`prevu.compose.ComposeApp`), the services kept across pushes (`keep`:
    image-only services and `[compose] keep`), the extra exposed services
    (name -> port) and the checkout whose files bind mounts copy.
    """

    app: ComposeApp
    keep: tuple[str, ...] = field(default=(), converter=_strings)
    expose: Mapping[str, int] = field(factory=dict, converter=_ports)
    checkout: str = ""

    @property
    def revisioned(self) -> tuple[str, ...]:
        """The services started anew for every revision (built and not kept)."""
        return tuple(name for name in self.app.names if name not in self.keep)


@frozen
class AppModel:
    """
    The services of an app and which one the preview's host reaches.

    `on_push` and `seed` are the `[data]` commands (argv, None: none), run in
    the exposed service's running container: `on_push` on every start before
    the route moves, `seed` once per preview after it (docs/data.md).
    `compose` is set when a Compose file produced it (several services).
    """

    services: tuple[Service, ...] = field(converter=_services)
    exposed: str = APP
    on_push: tuple[str, ...] | None = field(default=None, converter=_argv)
    seed: tuple[str, ...] | None = field(default=None, converter=_argv)
    compose: ComposeSpec | None = None

    def __attrs_post_init__(self) -> None:
        names = [service.name for service in self.services]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"an app model needs services with distinct names, got {names}")
        if self.exposed not in names:
            raise ValueError(f"the exposed service {self.exposed!r} is not among {names}")

    def service(self, name: str) -> Service:
        """The service called `name`; KeyError when there is none."""
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)

    @property
    def front(self) -> Service:
        """The exposed service (the one the route points at)."""
        return self.service(self.exposed)


def single_dockerfile(checkout: str, settings: RepoSettings) -> AppModel:
    """
    The one-service model of a repository with a Dockerfile, checked out at
    `checkout` (an absolute directory), configured by its `.prevu.toml`.

    Pure: paths are joined, never looked at (the caller checks that the
    Dockerfile exists).
    """
    context = posixpath.normpath(posixpath.join(checkout, settings.context))
    service = Service(
        name=APP,
        build=BuildSpec(
            context, settings.dockerfile_in_context, settings.build_args, settings.target
        ),
        command=settings.command,
        env=settings.env,
        health=settings.health,
        volumes=settings.volumes,
        port=settings.port,
        memory=settings.memory,
        cpus=settings.cpus,
    )
    return AppModel((service,), exposed=APP, on_push=settings.on_push, seed=settings.seed)
    return AppModel((service,), exposed=APP)


def from_compose(
    app: ComposeApp,
    settings: ComposeSettings,
    checkout: str,
    health: str | None,
    on_push: Sequence[str] | None = None,
    seed: Sequence[str] | None = None,
) -> AppModel:
    """
    The model of a checked Compose app (`prevu.compose.check_model`) under
    `[compose]` settings, with the `[data]` commands (run in `settings.service`).
    Raises ValueError when `service`, `expose` or `keep` name a service the
    file does not have.
    """
    names = app.names
    for name in (settings.service, *settings.expose, *settings.keep):
        if name not in names:
            raise ValueError(f"service {name!r} is not in the compose file ({', '.join(names)})")
    ports = {settings.service: settings.port, **settings.expose}
    services = []
    for service in app.services:
        build = None
        if service.build is not None:
            made = service.build
            build = BuildSpec(made.context, made.dockerfile, made.args, made.target)
        services.append(
            Service(
                name=service.name,
                image=None if build is not None else service.image,
                build=build,
                command=service.command,
                env=service.environment,
                health=health if service.name == settings.service else None,
                volumes=tuple(m.target for m in service.mounts if m.kind == "volume"),
                port=ports.get(service.name, 8080),
                memory=service.memory,
                cpus=service.cpus,
            )
        )
    exposed = {settings.service, *settings.expose}
    keep = tuple(
        s.name
        for s in app.services
        if (s.build is None or s.name in settings.keep) and s.name not in exposed
    )
    spec = ComposeSpec(app, keep, settings.expose, checkout)
    return AppModel(
        tuple(services), exposed=settings.service, on_push=on_push, seed=seed, compose=spec
    )
