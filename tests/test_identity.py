"""
Identity by construction (issue 11, kinds 2 and 5): a preview's id, host and
Docker object names are unique per (instance, forge, repository, number),
whatever the label template, folding, truncation or unicode does; and no
Docker object of another prevu is reused or removed by name.

The same inputs on the real engine: tests/test_identity_e2e.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from attrs import evolve
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import ensureDeferred

from prevu import labels as lb
from prevu.appmodel import AppModel, Service
from prevu.config import Config, RepoConfig, ServerConfig
from prevu.errors import DockerError
from prevu.forge import policy
from prevu.forge.events import PullRequest
from prevu.labels import Identity
from prevu.lifecycle import Revision
from prevu.naming import is_dns_label
from prevu.orchestrator.registry import Registry, Slot
from prevu.orchestrator.settings import OrchestratorSettings
from prevu.ports import NetworkInfo
from prevu.runtime import Built, Release
from prevu.testing.fakes import FakeDocker, fake_runtime
from prevu.testing.health import FakeHealth
from tests.test_orchestrator import REPO, SHAS, URL, Harness

TEMPLATES = [
    "pr-{number}-{repo}",
    "{branch}",
    "{repo}",
    "{owner}-{repo}-{number}",
    "{branch}-{repo}",
    "x" * 60 + "-{number}",
    "preview",
]


def pull_request(forge: str, repo: str, number: int, branch: str) -> PullRequest:
    return PullRequest(
        forge=forge,  # type: ignore[arg-type]
        repo=repo,
        number=number,
        sha="a" * 40,
        branch=branch,
        clone_url="https://forge.invalid/x.git",
        ref=f"refs/pull/{number}/head",
    )


def registry(template: str, instance: str = "inst1", network: str = "prevu") -> Registry:
    return Registry(
        OrchestratorSettings(instance=instance, label_template=template, network=network)
    )


def test_branches_that_fold_alike_get_three_previews() -> None:
    """Kind 2: `{branch}` with fix/login, fix-login, fix_login: three ids, each PR keeps its own."""
    reg = registry("{branch}")
    branches = {41: "fix/login", 42: "fix-login", 43: "fix_login"}
    slots = {
        n: reg.slot_for(pull_request("github", "acme/app", n, b), "public", 0.0)
        for n, b in branches.items()
    }
    ids = {n: slot.id for n, slot in slots.items()}
    assert ids[41] == "fix-login", "the first keeps the template's name: no salt when free"
    assert len(set(ids.values())) == 3
    assert len({slot.name.host for slot in slots.values()}) == 3
    for number, slot in slots.items():
        assert reg.find("github", "acme/app", number) is slot
        assert (slot.identity.number, reg.get(slot.id)) == (number, slot)
    # A later event of 42 finds 42's slot, not one with the same folded name.
    again = reg.slot_for(pull_request("github", "acme/app", 42, "fix-login"), "public", 1.0)
    assert again is slots[42]


def test_network_names_carry_the_instance() -> None:
    """Kind 5: the same id on two instances with one prefix gives two network names."""
    one, two = registry("pr-{number}-{repo}", "aaa"), registry("pr-{number}-{repo}", "bbb")
    a = one.slot_for(pull_request("github", "acme/app", 1, "x"), "private", 0.0)
    b = two.slot_for(pull_request("gitlab", "other-team/app", 1, "x"), "public", 0.0)
    assert a.id == b.id == "pr-1-app"
    assert one.settings.network_of(a.id) == "prevu-aaa-pr-1-app"
    assert one.settings.network_of(a.id) != two.settings.network_of(b.id)


names = st.text(alphabet=st.sampled_from("aA-_./ü\u00e9\u4e2d0"), min_size=1, max_size=12).filter(
    lambda s: s.strip("/") != ""
)
prs = st.tuples(
    st.sampled_from(["github", "gitlab"]),
    st.tuples(names, names).map(
        lambda pair: f"{pair[0].strip('/') or 'o'}/{pair[1].strip('/') or 'r'}"
    ),
    st.integers(min_value=1, max_value=5),
    st.text(alphabet=st.sampled_from("fix/login_-\u00fc\u00e9a"), max_size=70),
)


@settings(max_examples=150, derandomize=True, deadline=None)
@given(template=st.sampled_from(TEMPLATES), pulls=st.lists(prs, min_size=1, max_size=25))
def test_no_two_pull_requests_share_an_id_host_or_docker_name(
    template: str, pulls: list[tuple[str, str, int, str]]
) -> None:
    """Property: over generated names, every (forge, repo, number) has its own id, host, network."""
    regs = [registry(template, "aaa"), registry(template, "bbb")]
    seen: dict[tuple[str, str, str, int], tuple[str, str, str]] = {}
    for instance, reg in zip(("aaa", "bbb"), regs, strict=True):
        for forge, repo, number, branch in pulls:
            slot = reg.slot_for(pull_request(forge, repo, number, branch), "public", 0.0)
            key = (instance, forge, repo.lower(), number)
            names_of = (slot.id, slot.name.host, reg.settings.network_of(slot.id))
            assert is_dns_label(slot.id), slot.id
            assert seen.setdefault(key, names_of) == names_of, "a pull request keeps its names"
    by_instance: dict[str, list[tuple[str, str, str]]] = {}
    for (instance, *_), names_of in seen.items():
        by_instance.setdefault(instance, []).append(names_of)
    for values in by_instance.values():
        ids, hosts, networks = zip(*values, strict=True)
        assert len(set(ids)) == len(ids) and len(set(hosts)) == len(hosts)
        assert len(set(networks)) == len(networks)
    networks_a = {n for _, _, n in by_instance["aaa"]}
    networks_b = {n for _, _, n in by_instance["bbb"]}
    assert not networks_a & networks_b, "Docker names never collide across instances"


def release(instance: str, preview: str) -> Release:
    identity = Identity(instance, preview, "acme/app", 1, "github")
    return Release(
        preview, Revision("b" * 40, "main", 1), f"{preview}.localhost", identity.labels()
    )


@pytest_twisted.ensureDeferred
async def test_a_network_of_another_instance_is_never_joined() -> None:
    """A network under our name but labelled by another prevu: start refuses, remove leaves it."""
    docker = FakeDocker()
    runtime: Any = fake_runtime(docker, FakeHealth(), "mine")
    name = runtime.network_of("pr-1-app")
    foreign = {lb.MANAGED: "true", lb.INSTANCE: "theirs", lb.PREVIEW: "pr-1-app"}
    docker.networks[name] = NetworkInfo("net-theirs", name, foreign)
    built = Built(
        release("mine", "pr-1-app"), AppModel((Service("app", image="img"),)), {"app": "img"}
    )
    with pytest.raises(DockerError, match="belongs to theirs"):
        await runtime.start(built)
    assert docker.runs == {}, "no container started on another prevu's network"
    await runtime.remove("pr-1-app", data=True)
    assert docker.networks[name].labels == foreign, "another prevu's network is not removed"


def test_previews_of_the_previous_release_keep_their_ids_and_hosts(tmp_path: Path) -> None:
    """
    Upgrade: a preview started under the old clash salt (`fix-login-3f1d22`) and
    its network under the old name (`prevu-<id>`) are adopted: after a restart the
    pull request keeps its id and host, and teardown removes the old network too.
    """
    h = Harness(tmp_path, Config(server=ServerConfig(state_dir=str(tmp_path / "state"),
                                                     label="{branch}")))  # fmt: skip
    h.publish(43, SHAS[0])
    pr = pull_request("github", REPO, 43, "fix_login")
    old_id = "fix-login-3f1d22"
    h.orchestrator.registry.add(
        Slot(
            Identity(h.orchestrator.instance, old_id, REPO, 43, "github"),
            h.orchestrator.settings.name(old_id), pr.branch, URL, pr.ref, "public", 0.0, 0.0,
        )
    )  # fmt: skip
    h.orchestrator.apply(policy.Deploy(evolve(pr, sha=SHAS[0], clone_url=URL), RepoConfig(REPO)))
    h.settle()
    assert h.status(old_id) == "running"
    legacy = f"prevu-{old_id}"
    labels = Identity(h.orchestrator.instance, old_id, REPO, 43, "github").labels()
    h.docker.networks[legacy] = NetworkInfo("net-legacy", legacy, labels)

    h.orchestrator.stop()
    h.orchestrator = h.make()
    started = ensureDeferred(h.orchestrator.start())
    h.settle()
    assert started.called
    receipt = h.orchestrator.apply(
        policy.Deploy(evolve(pr, sha=SHAS[0], clone_url=URL), RepoConfig(REPO))
    )
    assert (receipt.preview, receipt.url) == (old_id, f"http://{old_id}.localhost:8000/")
    h.orchestrator.apply(policy.Destroy(evolve(pr, clone_url=URL), "pull request closed"))
    h.settle()
    assert h.status(old_id) == "stopped" and h.leftovers(old_id) == []
    assert legacy not in h.docker.networks
