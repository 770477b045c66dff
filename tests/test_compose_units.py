"""
Compose previews in the pure core: records keep `Deployment.extra` (and older
records load), the reconcile keeps a Compose preview's other containers while
it lives and adopts the exposed services' addresses, the expose host scheme.
"""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from prevu import labels as lb
from prevu import lifecycle as lc
from prevu.compose.check import env_suffix
from prevu.compose.write import service_host
from prevu.orchestrator.reconcile import Removal, SlotView, plan
from prevu.orchestrator.records import state_from_json, state_to_json
from prevu.ports import ContainerInfo, Managed

SHA = "a" * 40
REVISION = lc.Revision(SHA, "main", 1)
INSTANCE = "i1"
PREVIEW = "pr-1-shop"
PROJECT = "prevu-i1-pr-1-shop-aaaaaaaaaaaa-1"


def _labels(**more: str) -> dict[str, str]:
    return {lb.INSTANCE: INSTANCE, lb.PREVIEW: PREVIEW, lb.MANAGED: "true", **more}


def _head(extra: str = "api:3000") -> ContainerInfo:
    labels = _labels(
        **{
            lb.SHA: SHA,
            lb.SERIAL: "1",
            lb.PORT: "8080",
            lb.IMAGE: "img",
            lb.PROJECT: PROJECT,
            lb.EXPOSE: extra,
            "com.docker.compose.service": "web",
        }
    )
    return ContainerInfo("web1", "web", "img", "running", labels, {"net": "10.0.0.2"})


def _part(cid: str, service: str, part: str, project: str = PROJECT) -> ContainerInfo:
    labels = _labels(**{lb.PART: part, lb.PROJECT: project, "com.docker.compose.service": service})
    return ContainerInfo(cid, service, "img", "running", labels, {"net": "10.0.0.9"})


def test_records_keep_extra_and_read_older_records() -> None:
    deployment = lc.Deployment(REVISION, "c", "img", "10.0.0.2", 8080, (("api", "10.0.0.3", 3000),))
    state = lc.Preview(target=REVISION, serving=deployment)
    assert state_from_json(state_to_json(state)) == state
    older = state_to_json(
        lc.Preview(target=REVISION, serving=lc.Deployment(REVISION, "c", "i", "a", 1))
    )
    assert "extra" not in older["serving"]
    assert state_from_json(older).serving == lc.Deployment(REVISION, "c", "i", "a", 1)


def test_adopted_compose_deployment_has_its_exposed_services() -> None:
    api = _part("api1", "api", "revision")
    deployment = lb.deployment_of(_head(), [api])
    assert deployment is not None and deployment.extra == (("api", "10.0.0.9", 3000),)
    observed = Managed(containers=(_head(), api, _part("db1", "db", "keep", "keep-project")))
    result = plan(observed, {PREVIEW: SlotView(lc.Preview(target=REVISION))}, (), INSTANCE)
    assert result.events == ((PREVIEW, lc.Adopt(deployment)),)
    assert result.removals == ()


def test_parts_follow_their_preview() -> None:
    stale = _part("old-api", "api", "revision", "a-project-without-head")
    keep = _part("db1", "db", "keep", "keep-project")
    observed = Managed(containers=(stale, keep))
    live = plan(observed, {PREVIEW: SlotView(lc.Preview(target=REVISION))}, (), INSTANCE)
    assert live.removals == (Removal("container", "old-api"),)
    gone = plan(observed, {}, (), INSTANCE)
    assert set(gone.removals) == {Removal("container", "old-api"), Removal("container", "db1")}
    busy = lc.Preview(target=REVISION, job=lc.Job("start", REVISION, "img", True))
    assert plan(observed, {PREVIEW: SlotView(busy)}, (), INSTANCE).removals == ()


def test_expose_host_is_one_dns_label() -> None:
    assert service_host("api", "pr-1-shop.example.com") == "api--pr-1-shop.example.com"
    assert service_host("my_api", "pr-1.localhost") == "my-api--pr-1.localhost"


def test_docker_compose_keys() -> None:
    from prevu.config import parse_config
    from prevu.errors import ConfigError

    docker = parse_config({"docker": {"compose": "/opt/compose", "compose_memory": "1g"}}).docker
    assert (docker.compose, docker.compose_memory) == ("/opt/compose", 1 << 30)
    assert parse_config({}).docker.compose == "auto"
    for table, key in (
        ({"compose": "compose"}, "docker.compose"),
        ({"compose_memory": "1k"}, "docker.compose_memory"),
    ):
        try:
            parse_config({"docker": table}, "prevu.toml")
        except ConfigError as error:
            assert error.key == key
        else:
            raise AssertionError(f"{table} accepted")


NAMES = st.from_regex(r"^[a-z0-9][a-z0-9_.-]{0,20}$", fullmatch=True)


@given(NAMES, st.from_regex(r"^[a-z0-9][a-z0-9-]{0,20}$", fullmatch=True))
def test_any_service_name_gives_a_variable_and_one_dns_label(service: str, label: str) -> None:
    assert re.fullmatch(r"[A-Z0-9_]+", env_suffix(service))
    host = service_host(service, f"{label}.example.com")
    first, _, domain = host.partition(".")
    assert domain == "example.com" and first.endswith(f"--{label}")
    assert re.fullmatch(r"[a-z0-9-]+", first)
