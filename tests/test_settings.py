"""OrchestratorSettings from a config: clone credentials per forge, ports from endpoints."""

from __future__ import annotations

from pathlib import Path

from prevu.config import parse_config
from prevu.orchestrator.settings import OrchestratorSettings


def test_clone_credentials_follow_the_forge(tmp_path: Path) -> None:
    """GitHub clones authenticate as x-access-token, GitLab's as oauth2; local has none."""
    config = parse_config(
        {
            "server": {"state_dir": str(tmp_path)},
            "github": {"token": "ghp_example"},
            "gitlab": {"token": "glpat_example"},
        }
    )
    settings = OrchestratorSettings.from_config(config)
    assert (settings.clone_username("github"), settings.clone_token("github")) == (
        "x-access-token",
        "ghp_example",
    )
    assert (settings.clone_username("gitlab"), settings.clone_token("gitlab")) == (
        "oauth2",
        "glpat_example",
    )
    assert settings.clone_token("local") is None
    assert "glpat_example" not in repr(settings)


def test_preview_urls_carry_the_proxy_port(tmp_path: Path) -> None:
    """A proxy on a non-default port puts that port in preview URLs."""
    config = parse_config(
        {"server": {"state_dir": str(tmp_path), "http": "tcp:port=18480:interface=127.0.0.1"}}
    )
    settings = OrchestratorSettings.from_config(config)
    assert settings.name("pr-1-shop").url == "http://pr-1-shop.localhost:18480/"
