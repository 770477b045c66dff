"""
The allowlist over a Compose model: untrusted input in, a checked `ComposeApp` out.

Pure core. The input is the normalized model Compose v2 prints for the PR
head's compose file (`docker compose config --format json`, run by
`prevu.adapters.compose` with a scrubbed environment); the rules are issue 17
and docs/compose.md:

- services may use `image`, `build.{context, dockerfile, args, target}` inside
  the checkout, `command`, `entrypoint`, `environment`, `env_file` inside the
  checkout, `healthcheck`, `depends_on`, `working_dir`, `user`, `volumes`,
  `expose`, `labels` (none beginning `prevu.` or `com.docker.`),
  `deploy.resources`, `stop_grace_period` <= 30 s;
- `ports` and `restart` are dropped (said in `ComposeApp.drops`): the proxy is
  the only way in and prevu sets the restart policy;
- volumes: named volumes declared in the file without `driver`,
  `driver_opts` or `external`; `tmpfs`; bind mounts of files inside the
  checkout (kept read-only, from a copy) except the build context root of a
  built service, which is dropped (the image holds the code);
- networks: only the default one.

Anything else raises `ComposeRefused(service, key, reason)`. Symlinks are
resolved by the `realpath` callable the caller passes (the adapter gives
`os.path.realpath`), so that this module does no I/O.

Reference: the Compose specification, https://github.com/compose-spec/compose-spec/blob/main/spec.md
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from attrs import field, frozen

from prevu.errors import RepoConfigError

SERVICE_KEYS = frozenset(
    {
        "image",
        "build",
        "command",
        "entrypoint",
        "environment",
        "env_file",
        "healthcheck",
        "depends_on",
        "working_dir",
        "user",
        "volumes",
        "expose",
        "labels",
        "deploy",
        "stop_grace_period",
        "networks",
    }
)
"""The service keys a compose file may use (`networks` only as the default one)."""
DROPPED_KEYS = frozenset({"ports", "restart"})
"""Keys that are dropped with a note in the preview log, not refused."""
BUILD_KEYS = frozenset({"context", "dockerfile", "args", "target"})
HEALTH_KEYS = frozenset({"test", "interval", "timeout", "retries", "start_period", "disable"})
PREVU_IMAGES = ("prevu/", "prevu-cache/", "sha256:")
"""Image references a compose file may not name: other previews' images and caches."""
MAX_GRACE = 30.0
"""Seconds: the longest `stop_grace_period` a service may ask for."""
_IMAGE_ID = re.compile(r"^[0-9a-f]{6,64}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class ComposeRefused(RepoConfigError):
    """
    The compose file uses something prevu does not run: `key` is
    `services.<service>.<key>` (or a top-level key), `reason` says why.
    """

    def __str__(self) -> str:
        return f"compose file: {self.key}: {self.reason}"


@frozen
class Mount:
    """
    A mount of a service. `kind` "volume": `source` is the declared volume's
    key; "bind": `source` is the resolved path inside the checkout, always
    mounted read-only; "tmpfs": no source.
    """

    kind: Literal["volume", "bind", "tmpfs"]
    target: str
    source: str = ""
    read_only: bool = False


@frozen
class ComposeBuild:
    """A build inside the checkout: `context` absolute, `dockerfile` relative to it."""

    context: str
    dockerfile: str = "Dockerfile"
    args: Mapping[str, str] = field(factory=dict)
    target: str | None = None


@frozen
class ComposeService:
    """One checked service. Exactly one of `image` and `build` is set."""

    name: str
    image: str | None = None
    build: ComposeBuild | None = None
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    environment: Mapping[str, str] = field(factory=dict)
    healthcheck: Mapping[str, Any] | None = None
    depends_on: Mapping[str, str] = field(factory=dict)
    """Service name -> condition (service_started, service_healthy, ...)."""
    working_dir: str | None = None
    user: str | None = None
    mounts: tuple[Mount, ...] = ()
    expose: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(factory=dict)
    memory: int | None = None
    """Bytes: `deploy.resources.limits.memory` (None: a share of the budget)."""
    cpus: float | None = None
    stop_grace_period: float | None = None


@frozen
class ComposeApp:
    """
    A checked compose model: its services (sorted by name), the named
    volumes they use, and what was dropped (one sentence each, for the log).
    """

    services: tuple[ComposeService, ...]
    volumes: tuple[str, ...] = ()
    drops: tuple[str, ...] = ()

    def service(self, name: str) -> ComposeService:
        """The service called `name`; KeyError when there is none."""
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(service.name for service in self.services)


def env_suffix(service: str) -> str:
    """`PREVU_URL_<suffix>` for a service: upper-cased, anything outside [A-Z0-9_] -> `_`."""
    return re.sub(r"[^A-Z0-9_]", "_", service.upper())


def inside(path: str, root: str) -> bool:
    """True when absolute `path` is `root` or below it (both normalized)."""
    path, root = posixpath.normpath(path), posixpath.normpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_env_files(raw: Mapping[str, Any], checkout: str, realpath: Callable[[str], str]) -> None:
    """
    Check the `env_file` entries of the model printed without interpolation
    and without env resolution (`config --no-interpolate --no-env-resolution`):
    each a literal path that stays inside the checkout once symlinks are resolved.
    Raises ComposeRefused.
    """
    root = realpath(checkout)
    for name, service in _mapping(raw.get("services"), "services").items():
        files = service.get("env_file") or [] if isinstance(service, Mapping) else []
        for entry in files if isinstance(files, list) else [files]:
            path = entry.get("path") if isinstance(entry, Mapping) else entry
            if not isinstance(path, str) or "$" in path:
                raise ComposeRefused(f"services.{name}.env_file", f"{path!r}: a literal path only")
            absolute = posixpath.join(checkout, path)
            if not inside(realpath(absolute), root):
                raise ComposeRefused(f"services.{name}.env_file", f"{path} is outside the checkout")


def check_model(
    model: Mapping[str, Any], checkout: str, realpath: Callable[[str], str]
) -> ComposeApp:
    """
    The `ComposeApp` of a normalized compose model for the checkout at
    `checkout` (absolute). Raises ComposeRefused naming the key and service.
    """
    for key in model:
        if key not in ("name", "services", "networks", "volumes"):
            raise ComposeRefused(key, "top-level key not supported by prevu")
    root = realpath(checkout)
    _check_networks(_mapping(model.get("networks"), "networks"))
    declared = _check_volumes(_mapping(model.get("volumes"), "volumes"))
    services: list[ComposeService] = []
    drops: list[str] = []
    used: set[str] = set()
    for name, body in sorted(_mapping(model.get("services"), "services").items()):
        service = _service(name, _mapping(body, f"services.{name}"), root, realpath, declared)
        services.append(service)
        used |= {m.source for m in service.mounts if m.kind == "volume"}
        drops += _drops(name, body, root, realpath)
    if not services:
        raise ComposeRefused("services", "the compose file has no service")
    suffixes: dict[str, str] = {}
    for service in services:
        suffix = env_suffix(service.name)
        if suffix in suffixes:
            other = suffixes[suffix]
            raise ComposeRefused(
                f"services.{service.name}",
                f"{other} and {service.name} both map to PREVU_URL_{suffix}",
            )
        suffixes[suffix] = service.name
    return ComposeApp(tuple(services), tuple(sorted(used)), tuple(drops))


def _mapping(value: Any, key: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ComposeRefused(key, f"expected a mapping, got {type(value).__name__}")
    return value


def _check_networks(networks: Mapping[str, Any]) -> None:
    for name, body in networks.items():
        if name != "default":
            raise ComposeRefused(f"networks.{name}", "only the default network is allowed")
        body = _mapping(body, "networks.default")
        for key, value in body.items():
            if key == "external" and value:
                raise ComposeRefused("networks.default.external", "external networks are refused")
            if key not in ("name", "ipam", "external") or (key == "ipam" and value):
                raise ComposeRefused(
                    f"networks.default.{key}", "not allowed on the default network"
                )


def _check_volumes(volumes: Mapping[str, Any]) -> frozenset[str]:
    for name, body in volumes.items():
        body = _mapping(body, f"volumes.{name}")
        for key, value in body.items():
            if key == "name":
                continue
            if key == "external" and not value:
                continue
            what = "external volumes are" if key == "external" else f"{key} is"
            raise ComposeRefused(
                f"volumes.{name}.{key}", f"{what} not allowed (a plain named volume)"
            )
    return frozenset(volumes)


def _service(
    name: str,
    body: Mapping[str, Any],
    root: str,
    realpath: Callable[[str], str],
    declared: frozenset[str],
) -> ComposeService:
    where = f"services.{name}"
    if not _NAME.match(name):
        raise ComposeRefused(where, "service names use a-z, 0-9, '_', '.', '-' (63 at most)")
    for key in body:
        if key not in SERVICE_KEYS and key not in DROPPED_KEYS:
            raise ComposeRefused(f"{where}.{key}", "not allowed in a preview")
    networks = _mapping(body.get("networks"), f"{where}.networks")
    for network, value in networks.items():
        if network != "default" or value:
            raise ComposeRefused(f"{where}.networks.{network}", "only the default network")
    build = _build(name, body.get("build"), root, realpath)
    image = body.get("image")
    if build is not None:
        image = None  # built services run prevu's image, whatever `image` names
    elif not isinstance(image, str) or not image:
        raise ComposeRefused(where, "needs an image or a build")
    elif image.startswith(PREVU_IMAGES) or _IMAGE_ID.match(image):
        raise ComposeRefused(
            f"{where}.image",
            f"{image}: image ids and prevu's own images (other previews') are refused",
        )
    labels = _strings(body.get("labels"), f"{where}.labels")
    for label in labels:
        if label.startswith(("prevu.", "com.docker.")):
            raise ComposeRefused(
                f"{where}.labels.{label}", "prevu. and com.docker. labels are prevu's"
            )
    memory, cpus = _resources(where, body.get("deploy"))
    grace = body.get("stop_grace_period")
    seconds = _seconds(grace, f"{where}.stop_grace_period") if grace is not None else None
    if seconds is not None and seconds > MAX_GRACE:
        raise ComposeRefused(f"{where}.stop_grace_period", f"at most {MAX_GRACE:g}s, got {grace}")
    health = body.get("healthcheck")
    if health is not None:
        health = _mapping(health, f"{where}.healthcheck")
        for key in health:
            if key not in HEALTH_KEYS:
                raise ComposeRefused(f"{where}.healthcheck.{key}", "not allowed")
    return ComposeService(
        name=name,
        image=image,
        build=build,
        command=_argv(body.get("command"), f"{where}.command"),
        entrypoint=_argv(body.get("entrypoint"), f"{where}.entrypoint"),
        environment={
            k: "" if v is None else str(v)
            for k, v in _mapping(body.get("environment"), f"{where}.environment").items()
        },
        healthcheck=dict(health) if health is not None else None,
        depends_on={
            other: str(_mapping(spec, f"{where}.depends_on").get("condition", "service_started"))
            for other, spec in _mapping(body.get("depends_on"), f"{where}.depends_on").items()
        },
        working_dir=_optional_str(body.get("working_dir"), f"{where}.working_dir"),
        user=_optional_str(body.get("user"), f"{where}.user"),
        mounts=_mounts(name, body.get("volumes") or [], root, realpath, declared, build),
        expose=tuple(str(port) for port in body.get("expose") or ()),
        labels=labels,
        memory=memory,
        cpus=cpus,
        stop_grace_period=seconds,
    )


def _build(name: str, value: Any, root: str, realpath: Callable[[str], str]) -> ComposeBuild | None:
    if value is None:
        return None
    where = f"services.{name}.build"
    body = _mapping(value, where)
    for key in body:
        if key not in BUILD_KEYS:
            raise ComposeRefused(
                f"{where}.{key}", "not allowed (context, dockerfile, args, target)"
            )
    context = body.get("context")
    if not isinstance(context, str) or not context.startswith("/"):
        raise ComposeRefused(
            f"{where}.context", f"expected a directory in the checkout, got {context!r}"
        )
    context = realpath(context)
    if not inside(context, root):
        raise ComposeRefused(f"{where}.context", f"{context} is outside the checkout")
    dockerfile = body.get("dockerfile", "Dockerfile")
    if not isinstance(dockerfile, str) or not dockerfile:
        raise ComposeRefused(f"{where}.dockerfile", f"expected a path, got {dockerfile!r}")
    if not inside(realpath(posixpath.join(context, dockerfile)), root):
        raise ComposeRefused(f"{where}.dockerfile", f"{dockerfile} is outside the checkout")
    target = body.get("target")
    if target is not None and not isinstance(target, str):
        raise ComposeRefused(f"{where}.target", f"expected a stage name, got {target!r}")
    return ComposeBuild(
        context=context,
        dockerfile=dockerfile,
        args={
            k: "" if v is None else str(v)
            for k, v in _mapping(body.get("args"), f"{where}.args").items()
        },
        target=target,
    )


def _mounts(
    name: str,
    volumes: Any,
    root: str,
    realpath: Callable[[str], str],
    declared: frozenset[str],
    build: ComposeBuild | None,
) -> tuple[Mount, ...]:
    where = f"services.{name}.volumes"
    if not isinstance(volumes, list):
        raise ComposeRefused(where, "expected a list")
    mounts: list[Mount] = []
    for entry in volumes:
        entry = _mapping(entry, where)
        kind, source, target = entry.get("type"), entry.get("source"), entry.get("target")
        if not isinstance(target, str) or not target.startswith("/"):
            raise ComposeRefused(where, f"a mount needs an absolute target, got {target!r}")
        if kind == "tmpfs":
            mounts.append(Mount("tmpfs", target))
        elif kind == "volume":
            if not isinstance(source, str) or source not in declared:
                raise ComposeRefused(
                    where, f"{target}: use a named volume declared under top-level volumes"
                )
            mounts.append(Mount("volume", target, source, bool(entry.get("read_only"))))
        elif kind == "bind":
            resolved = realpath(str(source))
            if not inside(resolved, root):
                raise ComposeRefused(where, f"bind mount of {source} is outside the checkout")
            if build is not None and resolved == build.context:
                continue  # the build context root: the image holds the code (noted in drops)
            mounts.append(Mount("bind", target, resolved, True))
        else:
            raise ComposeRefused(where, f"{target}: mount type {kind!r} is not allowed")
    return tuple(mounts)


def _drops(
    name: str, body: Mapping[str, Any], root: str, realpath: Callable[[str], str]
) -> list[str]:
    drops = []
    if body.get("ports"):
        drops.append(f"service {name}: published ports dropped (the proxy is the only way in)")
    if body.get("restart"):
        drops.append(f"service {name}: restart dropped (prevu sets the restart policy)")
    build = body.get("build")
    context = (
        realpath(build["context"])
        if isinstance(build, Mapping) and isinstance(build.get("context"), str)
        else None
    )
    for entry in body.get("volumes") or []:
        if (
            isinstance(entry, Mapping)
            and entry.get("type") == "bind"
            and context is not None
            and realpath(str(entry.get("source"))) == context
        ):
            drops.append(
                f"service {name}: bind mount of the build context at {entry.get('target')} "
                "dropped (the image holds the code)"
            )
    if body.get("image") and build is not None:
        drops.append(f"service {name}: image {body['image']} ignored (prevu builds it)")
    return drops


def _strings(value: Any, key: str) -> dict[str, str]:
    if isinstance(value, list):
        value = dict(item.split("=", 1) if "=" in item else (item, "") for item in value)
    return {str(k): "" if v is None else str(v) for k, v in _mapping(value, key).items()}


def _argv(value: Any, key: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return ("/bin/sh", "-c", value)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ComposeRefused(key, f"expected a list of strings, got {value!r}")
    return tuple(value)


def _optional_str(value: Any, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ComposeRefused(key, f"expected a string, got {value!r}")
    return value


def _resources(where: str, deploy: Any) -> tuple[int | None, float | None]:
    body = _mapping(deploy, f"{where}.deploy")
    for key, value in body.items():
        if key != "resources" and value:
            raise ComposeRefused(f"{where}.deploy.{key}", "only deploy.resources is allowed")
    resources = _mapping(body.get("resources"), f"{where}.deploy.resources")
    for key in resources:
        if key not in ("limits", "reservations"):
            raise ComposeRefused(f"{where}.deploy.resources.{key}", "not allowed")
    limits = _mapping(resources.get("limits"), f"{where}.deploy.resources.limits")
    for key in limits:
        if key not in ("memory", "cpus"):
            raise ComposeRefused(f"{where}.deploy.resources.limits.{key}", "only memory and cpus")
    memory, cpus = limits.get("memory"), limits.get("cpus")
    try:
        return (
            int(memory) if memory is not None else None,
            float(cpus) if cpus is not None else None,
        )
    except (TypeError, ValueError):
        raise ComposeRefused(
            f"{where}.deploy.resources.limits", "memory and cpus are numbers"
        ) from None


def _seconds(value: Any, key: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) / 1e9 if value > 1e6 else float(value)
    text = str(value)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ComposeRefused(key, f"expected a duration like 10s, got {value!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def sequence(values: Iterable[str]) -> Sequence[str]:
    """`values` as a sorted tuple (helper for writers)."""
    return tuple(sorted(values))
