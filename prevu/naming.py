"""
Preview ids and host names, from the `[server] label` template.

Pure core. A preview's id is its first DNS label (`pr-42-shop` for the default
`pr-{number}-{repo}`); its host is `<id>.<domain>`. Every placeholder value is
folded to DNS-safe characters, and a label longer than 63 characters is cut
and given a short hash of the full name, so that two long names stay distinct.
"""

from __future__ import annotations

import hashlib
import re

from attrs import field, frozen, validators

MAX_LABEL = 63
_UNSAFE = re.compile(r"[^a-z0-9-]+")
_DASHES = re.compile(r"-{2,}")
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def dns_safe(text: str) -> str:
    """Lower-case `text` and fold anything but letters, digits and `-` into single dashes."""
    folded = _DASHES.sub("-", _UNSAFE.sub("-", text.lower()))
    return folded.strip("-")


def is_dns_label(text: str) -> bool:
    """True when `text` is one valid DNS label (letters, digits, inner dashes, <= 63)."""
    return bool(_LABEL.match(text))


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def split_repo(repo: str) -> tuple[str, str]:
    """`group/sub/name` -> (`group/sub`, `name`); `name` alone -> (``, `name`)."""
    owner, _, name = repo.strip("/").rpartition("/")
    return owner, name


def preview_label(template: str, repo: str, number: int, branch: str = "", salt: str = "") -> str:
    """
    The DNS label of a preview, from the `[server] label` template.

    `salt`, when given, is hashed into a suffix: the orchestrator uses it to
    tell apart two repositories whose names fold to the same label.
    """
    owner, name = split_repo(repo)
    raw = template.format(
        number=number,
        repo=dns_safe(name) or "repo",
        owner=dns_safe(owner.replace("/", "-")) or "owner",
        branch=dns_safe(branch) or "branch",
    )
    label = dns_safe(raw) or f"pr-{number}"
    if salt:
        label = f"{label[: MAX_LABEL - 7].rstrip('-')}-{_short_hash(salt)}"
    elif len(label) > MAX_LABEL:
        label = f"{label[: MAX_LABEL - 7].rstrip('-')}-{_short_hash(raw)}"
    if not label[0].isalnum():
        label = f"p{label}"[:MAX_LABEL]
    return label


def network_name(prefix: str, instance: str, preview: str) -> str:
    """
    The Docker network of `preview` of the prevu `instance`: `<prefix>-<instance>-<preview>`.

    The instance is part of the name so that two prevus on one engine with the
    same `[docker] network` prefix and the same preview id (GitHub `acme/app`
    PR 1 and GitLab `other-team/app` MR 1) never share or remove a network.
    The preview's container names start with it.
    """
    return f"{prefix}-{instance}-{preview}"


@frozen
class PreviewName:
    """A preview's id (its DNS label), host and URL."""

    id: str = field(validator=validators.matches_re(_LABEL))
    host: str
    url: str

    @classmethod
    def build(
        cls, label: str, domain: str, scheme: str = "http", port: int | None = None
    ) -> PreviewName:
        """The name for `label` under `domain`, reached with `scheme` (and a non-default `port`)."""
        host = f"{label}.{domain}"
        default = {"http": 80, "https": 443}[scheme]
        suffix = f":{port}" if port and port != default else ""
        return cls(id=label, host=host, url=f"{scheme}://{host}{suffix}/")
