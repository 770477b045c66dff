"""
Who may act from the dashboard, and the optional facades the actions use.

Seeing a preview follows the login's rules (`LoginPages.repo_filter`);
acting on one (redeploy, destroy, keep/extend, share) needs an *operator*:
a user named in `[auth] admins`, or a user the `WritePermission` port says
may write to the preview's repository (GitHub: a collaborator whose
`role_name` is admin, maintain or write,
https://docs.github.com/en/rest/collaborators/collaborators#get-repository-permissions-for-a-user).
`operator_refusal` decides; it answers the reason of a refusal, or None.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


class WritePermission(Protocol):
    """
    Whether a forge user may write to a repository (reactor thread; the
    answer may come from the forge's API). Raises nothing: an unknown user,
    a repository the credential cannot read or a failed call answer False.
    """

    async def may_write(self, repo: str, user: str) -> bool:
        """True when `user` has write access (or more) to `repo` ("owner/name")."""
        ...


@runtime_checkable
class Keeper(Protocol):
    """
    The orchestrator's keep/extend facade (SPEC §6: `POST /api/previews/{id}/keep`
    and `/extend`; `prevu.orchestrator.keeping`). Reactor thread; each answers
    the preview's new keep-until (epoch seconds, `inf` when kept) or None for
    an unknown preview.
    """

    def keep(self, preview: str) -> float | None:
        """Keep `preview` running with no TTL."""
        ...

    def extend(self, preview: str, seconds: float) -> float | None:
        """Keep `preview` at least `seconds` longer."""
        ...


async def operator_refusal(
    user: str | None,
    repo: str,
    admins: tuple[str, ...],
    write: WritePermission | None,
    login_configured: bool = True,
) -> str | None:
    """
    None when `user` may act on previews of `repo`, else the reason why not:
    nobody logged in, or neither in `admins` nor a writer of `repo`.
    `login_configured` False (no `[auth] users_file` nor `[auth.github]`, the
    embedded defaults): nobody can log in, so the reason points at the CLI
    (docs/api.md#cli) and at the keys that enable a login (docs/auth.md).
    """
    if user is None and not login_configured:
        return (
            "no login is configured, so nobody acts from here: use the CLI "
            "(prevu redeploy / prevu destroy NAME), or set [auth] users_file "
            "and admins (docs/auth.md)"
        )
    if user is None:
        return "log in as an operator to act on previews ([auth] admins)"
    if user in admins:
        return None
    if write is not None and await write.may_write(repo, user):
        return None
    if write is None:
        return f"{user} is not an operator: not in [auth] admins"
    return f"{user} is not an operator: not in [auth] admins and no write access to {repo}"
