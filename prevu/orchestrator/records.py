"""
The storage codec: a preview's slot to a `PreviewRecord` and back, losslessly.

The lifecycle state (`prevu.lifecycle.Preview`, with every revision's serial,
the serving deployment and the job in flight) is kept whole as a JSON
document in the record's `data["state"]`, typed (numbers as numbers, flags
as booleans), so that `decode(encode(state)) == state` for every state. The
record's columns (status, sha, error, container, ...) are what the API lists;
they are derived from the state, never read back into it.

Records written before this codec (release 7ee9a63 and older: `serial`,
`clean`, `failed`, `awaiting` as flat strings) are read as that release read
them (`_legacy_state`). `after_restart` says what of a stored state survives
a restart. Pure apart from the `Slot` it builds: no I/O, no clock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from attrs import evolve

from prevu import lifecycle as lc
from prevu.labels import Identity
from prevu.orchestrator.registry import Slot
from prevu.orchestrator.settings import OrchestratorSettings
from prevu.ports import PreviewRecord

FORMAT = 2
"""The version of the JSON in `data["state"]` (1 was the flat strings of release 7ee9a63)."""


# --- the state as JSON ---------------------------------------------------------


def _revision(revision: lc.Revision | None) -> dict[str, Any] | None:
    if revision is None:
        return None
    return {"sha": revision.sha, "branch": revision.branch, "serial": revision.serial}


def _deployment(deployment: lc.Deployment | None) -> dict[str, Any] | None:
    if deployment is None:
        return None
    value: dict[str, Any] = {
        "revision": _revision(deployment.revision),
        "container": deployment.container,
        "image": deployment.image,
        "address": deployment.address,
        "port": deployment.port,
    }
    if deployment.extra:  # Compose previews' exposed services (absent: none, older records)
        value["extra"] = [list(item) for item in deployment.extra]
    return value


def state_to_json(state: lc.Preview) -> dict[str, Any]:
    """The whole lifecycle state as JSON values (the inverse of `state_from_json`)."""
    job = state.job
    return {
        "v": FORMAT,
        "closed": state.closed,
        "target": _revision(state.target),
        "serving": _deployment(state.serving),
        "job": None
        if job is None
        else {
            "kind": job.kind,
            "revision": _revision(job.revision),
            "image": job.image,
            "started": job.started,
        },
        "awaiting": _revision(state.awaiting),
        "approved": state.approved,
        "failed": _revision(state.failed),
        "error": state.error,
        "note": state.note,
        "asleep": state.asleep,
        "clean": state.clean,
        "held": state.held,
    }


def _read_revision(value: Any) -> lc.Revision | None:
    if value is None:
        return None
    return lc.Revision(str(value["sha"]), str(value["branch"]), int(value["serial"]))


def _read_deployment(value: Any) -> lc.Deployment | None:
    if value is None:
        return None
    revision = _read_revision(value["revision"])
    assert revision is not None
    extra = tuple((str(s), str(a), int(p)) for s, a, p in value.get("extra") or ())
    return lc.Deployment(
        revision, value["container"], value["image"], value["address"], int(value["port"]), extra
    )


def state_from_json(value: Mapping[str, Any]) -> lc.Preview:
    """
    The lifecycle state from `state_to_json`'s output.

    Raises ValueError (or KeyError, TypeError) on a document that is not one.
    """
    if value.get("v") != FORMAT:
        raise ValueError(f"unknown state format {value.get('v')!r}")
    job = value["job"]
    return lc.Preview(
        closed=bool(value["closed"]),
        target=_read_revision(value["target"]),
        serving=_read_deployment(value["serving"]),
        job=None
        if job is None
        else lc.Job(job["kind"], _read_revision(job["revision"]), job["image"], job["started"]),
        awaiting=_read_revision(value["awaiting"]),
        approved=value["approved"],
        failed=_read_revision(value["failed"]),
        error=value["error"],
        note=value["note"],
        asleep=bool(value["asleep"]),
        clean=bool(value["clean"]),
        held=bool(value.get("held", False)),
    )


# --- records -------------------------------------------------------------------------


def encode(slot: Slot, settings: OrchestratorSettings) -> PreviewRecord:
    """The record of `slot` as it is now."""
    state = slot.state
    serving, target = state.serving, state.target
    data = {"state": json.dumps(state_to_json(state), sort_keys=True)}
    if state.detail:
        data["detail"] = state.detail
    if slot.forge_seen:
        data["forge_seen"] = repr(slot.forge_seen)
    if slot.forge_closed is not None:
        data["forge_closed"] = repr(slot.forge_closed)
    if slot.untrusted:
        data["untrusted"] = "true"
    if slot.seeded:
        data["seeded"] = "true"
    if slot.wipe:
        data["wipe"] = "true"
    if slot.keep_until is not None:
        data["keep_until"] = repr(slot.keep_until)
    return PreviewRecord(
        id=slot.id,
        repo=slot.identity.repo,
        number=slot.identity.number,
        branch=(target.branch if target else slot.branch) or slot.branch,
        sha=state.sha or "",
        status=state.status,
        url=slot.name.url,
        host=slot.name.host,
        # `starting` with an error: healing (issue 15), the error says what happened;
        # a held preview (a failed on_push) keeps serving with its error (docs/data.md).
        error=state.error if state.status in ("failed", "starting") or state.holding else None,
        created_at=slot.created_at,
        updated_at=slot.updated_at,
        access=slot.access,
        forge=slot.identity.forge,
        clone_url=slot.clone_url,
        ref=slot.ref,
        container=serving.container if serving else None,
        image=serving.image if serving else None,
        network=settings.network_of(slot.id) if not state.clean else None,
        closed=state.closed,
        data=data,
    )


def decode(record: PreviewRecord) -> lc.Preview:
    """The lifecycle state stored in `record`, as written (any format)."""
    stored = record.data.get("state")
    if stored is None:
        return _legacy_state(record)
    return state_from_json(json.loads(stored))


def _legacy_state(record: PreviewRecord) -> lc.Preview:
    """A record of release 7ee9a63 or older, read exactly as that release read it."""
    data = record.data
    target = None
    if record.sha and "awaiting" not in data:
        target = lc.Revision(record.sha, record.branch, int(data.get("serial", "0") or 0))
    awaiting = None
    if "awaiting" in data:
        awaiting = lc.Revision(data["awaiting"], data.get("awaiting_branch", ""), 1)
    failed = target if data.get("failed") == "1" else None
    return lc.Preview(
        closed=record.closed,
        target=target,
        awaiting=awaiting,
        approved=data.get("approved"),
        failed=failed,
        error=record.error if failed else None,
        note=data.get("detail") if record.closed else None,
        clean=data.get("clean", "0") == "1",
    )


def after_restart(state: lc.Preview) -> lc.Preview:
    """
    What of a stored state a new prevu starts from: no job is in flight any
    more (the next Poke starts what is due), and what serves is learned again
    from the engine's labels (reconcile adopts it and routes it).
    """
    return evolve(state, job=None, serving=None, asleep=False)


def restore(record: PreviewRecord, settings: OrchestratorSettings) -> Slot:
    """The slot of a stored preview after a restart."""
    identity = Identity(settings.instance, record.id, record.repo, record.number, record.forge)
    return Slot(
        identity,
        settings.name(record.id),
        record.branch,
        record.clone_url,
        record.ref,
        record.access,
        record.created_at,
        record.updated_at,
        after_restart(decode(record)),
        forge_seen=_float(record.data.get("forge_seen")),
        forge_closed=_float(record.data["forge_closed"]) if "forge_closed" in record.data else None,
        untrusted=record.data.get("untrusted") == "true",
        seeded=record.data.get("seeded") == "true",
        wipe=record.data.get("wipe") == "true",
        keep_until=_float(record.data["keep_until"]) if "keep_until" in record.data else None,
    )


def _float(text: str | None) -> float:
    try:
        return float(text) if text else 0.0
    except ValueError:
        return 0.0
