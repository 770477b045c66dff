"""
The `local` forge: `prevu up`, a branch deployed through the API, no forge.

Pure core. It has no webhooks (every delivery is refused: previews come from
`POST /api/previews`), no token (the clone URL is one the server can read as
it is), and no fork pull requests to approve.
"""

from __future__ import annotations

from attrs import frozen

from prevu.config import Config
from prevu.errors import RequestRefused
from prevu.forge.base import Delivery
from prevu.forge.events import ForgeEvent


@frozen
class Local:
    """`prevu up` behind the `Forge` Protocol."""

    name: str = "local"
    clone_username: str = "prevu"
    """Unused: the local forge has no token to send."""

    def webhook_secret(self, config: Config) -> str | None:
        return None

    def webhooks_off(self) -> str:
        return "the local forge has no webhooks: deploy with `prevu up` (POST /api/previews)"

    def verify(self, secret: str, delivery: Delivery) -> str | None:
        return "the local forge has no webhooks"

    def parse(self, delivery: Delivery) -> ForgeEvent:
        raise RequestRefused("malformed", "the local forge has no webhooks")

    def clone_token(self, config: Config) -> str | None:
        return None

    def fork_approval(self) -> str | None:
        return None
