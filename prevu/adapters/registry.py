"""
Deleting a closed preview's images from `[swarm] registry` (issue 19): the
registry holds every pull request's code, and a closed preview's should not
stay there.

Blocking (urllib): call on prevu's thread pool only. Docker Registry HTTP API
V2 (https://distribution.github.io/distribution/spec/api/): list the
repository's tags (`GET /v2/<name>/tags/list`), ask each tag's manifest
digest (`HEAD /v2/<name>/manifests/<tag>` with the manifest media types; the
`Docker-Content-Digest` header), delete it
(`DELETE /v2/<name>/manifests/<digest>`). The registry must allow deletes
(`storage.delete.enabled`) and run its garbage collection to free the
blobs. HTTPS unless the engine lists the registry as insecure (`docker info`
RegistryConfig.IndexConfigs[<registry>].Secure false); Basic credentials
from the Docker config's `auths` entry of the registry, when given (a
registry with token authentication is not supported here: `RegistryError`).
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from attrs import frozen

from prevu.errors import PrevuError

MANIFESTS = ", ".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    )
)


class RegistryError(PrevuError):
    """The registry refused or failed a request (the reason says which and why)."""


@frozen
class Registry:
    """One registry: `address` is `host[:port]`, `secure` HTTPS, `auth` a Basic credential."""

    address: str
    secure: bool = True
    auth: str | None = None
    timeout: float = 30.0

    @classmethod
    def for_engine(
        cls, address: str, info: Mapping[str, Any], auths: Mapping[str, Any]
    ) -> Registry:
        """
        The registry at `address` as the engine sees it (`info`: `docker info`)
        with the `auths` of a Docker config.json (its `auth` entry: base64 user:password).
        """
        host = address.split("/", 1)[0]
        configs = (info.get("RegistryConfig") or {}).get("IndexConfigs") or {}
        secure = bool((configs.get(host) or {}).get("Secure", True))
        entry = auths.get(host) or auths.get(f"https://{host}") or {}
        auth = entry.get("auth") if isinstance(entry, Mapping) else None
        if not auth and isinstance(entry, Mapping) and entry.get("username"):
            pair = f"{entry['username']}:{entry.get('password', '')}".encode()
            auth = base64.b64encode(pair).decode()
        return cls(host, secure, auth or None)

    def _request(self, method: str, path: str, accept: str | None = None) -> Any:
        scheme = "https" if self.secure else "http"
        request = urllib.request.Request(f"{scheme}://{self.address}{path}", method=method)
        if accept:
            request.add_header("Accept", accept)
        if self.auth:
            request.add_header("Authorization", f"Basic {self.auth}")
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            detail = error.read().decode("utf-8", "replace")[:300]
            raise RegistryError(f"{method} {path}: {error.code} {detail}") from None
        except OSError as error:
            raise RegistryError(f"{method} {path}: {error}") from None

    def delete_repository(self, name: str) -> list[str]:
        """Delete every tag's manifest of repository `name`; the tags deleted."""
        quoted = urllib.parse.quote(name)
        listed = self._request("GET", f"/v2/{quoted}/tags/list")
        if listed is None:
            return []
        with listed:
            tags = json.loads(listed.read() or b"{}").get("tags") or []
        deleted = []
        for tag in tags:
            head = self._request("HEAD", f"/v2/{quoted}/manifests/{tag}", MANIFESTS)
            if head is None:
                continue
            with head:
                digest = head.headers.get("Docker-Content-Digest")
            if digest and self._request("DELETE", f"/v2/{quoted}/manifests/{digest}") is not None:
                deleted.append(str(tag))
        return deleted
