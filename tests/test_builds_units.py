"""Issue 10's rules without the engine: config keys, `[build] target`, env/secrets
precedence and what forks get (fake Docker), masking, the cache image's TTL on a Clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import ensureDeferred

from prevu import labels as lb
from prevu.adapters.buildkit import step_output
from prevu.adapters.docker_runtime import CACHE, CACHE_AT
from prevu.appmodel import single_dockerfile
from prevu.config import Config, ConfigError, RepoConfig, ServerConfig, parse_config
from prevu.errors import RepoConfigError
from prevu.forge import policy
from prevu.ports import ImageInfo
from prevu.repoconfig import parse_repo_config
from tests.test_orchestrator import REPO, SHAS, Harness


def files(tmp_path: Path) -> Any:
    def read(name: str) -> str:
        return (tmp_path / name).read_text()

    return read


def test_docker_and_repos_keys(tmp_path: Path) -> None:
    """[docker] cli/registry_auth_file/build_cache_max; [[repos]] env/secrets/build_secrets."""
    (tmp_path / "key").write_text("file-secret\n")
    (tmp_path / "token").write_text("build-token")
    data = {
        "docker": {"cli": "/usr/bin/docker", "build_cache_max": "2g"},
        "repos": [
            {
                "name": "a/b",
                "env": {"MODE": "preview", "N": 3},
                "secrets": {"API": "inline-secret", "KEY_file": "key"},
                "build_secrets": {"npm_file": "token"},
            }
        ],
    }
    config = parse_config(data, str(tmp_path / "prevu.toml"), read_file=files(tmp_path))
    assert config.docker.cli == "/usr/bin/docker" and config.docker.build_cache_max == 2 << 30
    (repo,) = config.repos
    assert repo.env == {"MODE": "preview", "N": "3"}
    assert repo.secrets == {"API": "inline-secret", "KEY": "file-secret"}
    assert repo.build_secrets == {"npm": str(tmp_path / "token")}
    assert repo.build_secret_values == ("build-token",)
    assert "inline-secret" not in repr(repo) and "build-token" not in repr(repo)


@pytest.mark.parametrize(
    ("data", "key", "reason"),
    [
        ({"docker": {"cli": "docker"}}, "docker.cli", "absolute path"),
        ({"docker": {"build_cache_max": "10k"}}, "docker.build_cache_max", "at least 1m"),
        ({"repos": [{"name": "a/b", "env": {"PREVU_X": "1"}}]}, "repos[0].env.PREVU_X", "PREVU_"),
        ({"repos": [{"name": "a/b", "env": {"A-B": "1"}}]}, "repos[0].env.A-B", "letters"),
        ({"repos": [{"name": "a/b", "secrets": {"K_file": "nope"}}]}, "repos[0].secrets.K_file",
         "cannot read"),
        ({"repos": [{"name": "a/b", "secrets": {"K": "x", "K_file": "key"}}]},
         "repos[0].secrets.K_file", "not both"),
        ({"repos": [{"name": "a/b", "build_secrets": {"npm": "x"}}]},
         "repos[0].build_secrets.npm", "as a file"),
    ],
)  # fmt: skip
def test_bad_keys_are_clear_errors(tmp_path: Path, data: Any, key: str, reason: str) -> None:
    (tmp_path / "key").write_text("k\n")
    with pytest.raises(ConfigError) as raised:
        parse_config(data, str(tmp_path / "prevu.toml"), read_file=files(tmp_path))
    assert raised.value.key == key and reason in raised.value.reason


def test_build_target_reaches_the_model() -> None:
    """`[build] target` in `.prevu.toml` is the model's build target; a bad one is refused."""
    settings = parse_repo_config('[build]\ntarget = "final"\n')
    build = single_dockerfile("/w", settings).front.build
    assert build is not None and build.target == "final"
    assert single_dockerfile("/w", parse_repo_config(None)).front.build.target is None  # type: ignore[union-attr]
    with pytest.raises(RepoConfigError) as raised:
        parse_repo_config('[build]\ntarget = "a b"\n')
    assert raised.value.key == "build.target"


def test_step_output_drops_buildkits_prefix_only_from_a_steps_output() -> None:
    assert step_output("#7 0.412 hello world") == "hello world"
    assert step_output("#7 CACHED") == "#7 CACHED"
    assert step_output("#7 [2/3] RUN make") == "#7 [2/3] RUN make"


def harness(tmp_path: Path, **repo: Any) -> Harness:
    config = Config(
        server=ServerConfig(state_dir=str(tmp_path / "state")),
        repos=(RepoConfig(REPO, **repo),),
    )
    return Harness(tmp_path, config)


def deploy(h: Harness, number: int, fork: bool, forks: str) -> None:
    settings = RepoConfig(REPO, forks=forks)  # type: ignore[arg-type]
    gate = "approve" if fork and forks == "approve" else "open"
    h.orchestrator.apply(policy.Deploy(h.pr(number, SHAS[number], fork), settings, gate, True))  # type: ignore[arg-type]


SECRETS = {
    "env": {"SHARED": "env", "FROM_ENV": "env", "BOTH": "env"},
    "secrets": {"SHARED": "secret-value", "TOKEN": "run-token-value"},
    "build_secrets": {"npm": "/srv/npm-token"},
    "build_secret_values": ("npm-token-value",),
}


def test_env_and_secrets_precedence_and_masking(tmp_path: Path) -> None:
    """PREVU_* > secrets > env > .prevu.toml env; build secrets reach the build; values
    printed by a build are masked in the preview's log."""
    h = harness(tmp_path, **SECRETS)
    h.docker.build_lines = ("token is npm-token-value", "run-token-value too")
    toml = '[run]\nenv = { BOTH = "toml", ONLY_TOML = "toml" }\n'
    h.publish(1, SHAS[1], {".prevu.toml": toml})
    deploy(h, 1, fork=False, forks="approve")
    (run,) = h.docker.runs.values()
    assert run.env["SHARED"] == "secret-value" and run.env["TOKEN"] == "run-token-value"
    assert run.env["BOTH"] == "env" and run.env["ONLY_TOML"] == "toml"
    assert run.env["FROM_ENV"] == "env" and run.env["PREVU_PR"] == "1"
    (build,) = h.docker.builds
    assert build.secrets == {"npm": "/srv/npm-token"}
    assert build.cache_tag is not None and build.cache_labels[CACHE] == f"github/{REPO}"
    logs = [entry.line for entry in h.store.read_logs("pr-1-shop")]
    assert "token is ***" in logs and "*** too" in logs
    assert not any("npm-token-value" in line or "run-token-value" in line for line in logs)


@pytest.mark.parametrize("forks", ["allow", "approve"])
def test_what_a_fork_gets(tmp_path: Path, forks: str) -> None:
    """`allow`: a fork's build and container get no secrets and no cache image;
    `approve`: the approved SHA gets them."""
    h = harness(tmp_path, **SECRETS, forks=forks)
    h.publish(3, SHAS[3])
    deploy(h, 3, fork=True, forks=forks)
    if forks == "approve":
        assert h.docker.builds == []
        assert h.orchestrator.approve_commit("pr-3-shop", SHAS[3], "maintainer") is None
    (build,) = h.docker.builds
    (run,) = h.docker.runs.values()
    assert run.env["FROM_ENV"] == "env"
    if forks == "allow":
        assert build.secrets == {} and build.cache_tag is None and build.cache_from == ()
        assert "TOKEN" not in run.env and run.env["SHARED"] == "env"
    else:
        assert build.secrets == {"npm": "/srv/npm-token"} and build.cache_tag is not None
        assert run.env["TOKEN"] == "run-token-value"


def test_cache_image_goes_after_the_ttl_without_a_preview(tmp_path: Path) -> None:
    """The reconcile removes a repository's cache image only once it has no preview
    and the image is older than `previews.ttl` (on the Clock)."""
    h = Harness(tmp_path, cache_ttl=100.0)
    instance = h.orchestrator.instance
    cache = {
        lb.INSTANCE: instance,
        CACHE: f"github/{REPO}",
        CACHE_AT: "1000",
        "prevu.managed": "true",
    }
    other = {**cache, lb.INSTANCE: "someone-else"}
    h.docker.images["sha256:c"] = ImageInfo("sha256:c", ("prevu-cache/x:1",), cache)
    h.docker.images["sha256:o"] = ImageInfo("sha256:o", ("prevu-cache/x:2",), other)
    h.publish(1, SHAS[1])
    deploy(h, 1, fork=False, forks="approve")
    h.clock.advance(2000 - h.clock.seconds())
    ensureDeferred(h.orchestrator.reconciler.reconcile())
    assert "sha256:c" in h.docker.images, "the repository still has a preview"
    h.orchestrator.apply(policy.Destroy(h.pr(1, SHAS[1]), "closed"))
    h.settle()
    for age, kept in ((50, True), (150, False)):
        refreshed = str(int(h.clock.seconds()) - age)
        h.docker.images["sha256:c"] = ImageInfo(
            "sha256:c", ("prevu-cache/x:1",), {**cache, CACHE_AT: refreshed}
        )
        ensureDeferred(h.orchestrator.reconciler.reconcile())
        assert ("sha256:c" in h.docker.images) is kept, age
    assert "sha256:o" in h.docker.images, "another instance's cache image is not ours"
