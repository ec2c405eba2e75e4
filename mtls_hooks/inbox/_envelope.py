"""A verified webhook as an inbox job, and back: what the handler worker rebuilds.

The job's payload is the body exactly as signed (``event.raw_body``); its ``meta`` holds the
facts the checks established (the ``webhook-id``, the verified timestamp, the event type and
the peer's certificate identity), so a handler run from the inbox sees the same
:class:`~mtls_hooks.WebhookEvent` it would have seen in the request. Nothing secret is
stored: a certificate identity is public, and the signing keys never reach the inbox.

The job's id is derived from ``(endpoint, webhook-id)`` (:func:`inbox_key`): a sender's
retry of an event already in the inbox finds the first job, whatever state it is in, so the
inbox is its own dedupe record for as long as its jobs are kept (``purge`` ends that).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import ipaddress
import json
from json.encoder import encode_basestring_ascii
from typing import Any, Final

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.core._events import WebhookEvent
from mtls_hooks.core._identity import PeerIdentity
from mtls_hooks.queue._protocol import Job, JsonText, NewJob

__all__ = ["QUEUE", "event_from_job", "inbox_key", "job_for_event"]

#: The queue name of inbox jobs in the engine's tables.
QUEUE: Final = "inbox"
_PEER_FIELDS: Final = tuple(f.name for f in dataclasses.fields(PeerIdentity))
# A sender presents one certificate for all its webhooks: its record is serialised once.
_PEER_JSON: dict[str, str] = {}
_MAX_PEERS: Final = 1024


def inbox_key(endpoint: str, webhook_id: str) -> str:
    """The job id of a webhook in the inbox: ``in_`` and a digest of (endpoint, webhook-id).

    The id is the dedupe key: the jobs table's unique index on ids refuses a second job
    for the same webhook, so the inbox needs no idempotency key (one index write fewer per
    webhook). A digest, because a webhook-id is the sender's text.
    """
    digest = hashlib.sha256(f"{endpoint} {webhook_id}".encode()).digest()
    return "in_" + base64.urlsafe_b64encode(digest[:18]).decode()


def job_for_event(event: WebhookEvent) -> NewJob:
    """The inbox job that stores ``event``.

    Its meta is written as JSON text here, with the peer's record serialised once per
    certificate: ``json.dumps`` of the whole record on every webhook cost about 13 µs.
    """
    peer = "null" if event.peer is None else _peer_json(event.peer)
    meta = JsonText(
        f'{{"webhook_id":{encode_basestring_ascii(event.id)},'
        f'"event_type":{encode_basestring_ascii(event.type)},'
        f'"timestamp":{int(event.timestamp)},"peer":{peer}}}'
    )
    return NewJob(
        QUEUE,
        event.endpoint,
        event.raw_body,
        meta=meta,
        job_id=inbox_key(event.endpoint, event.id),
    )


def event_from_job(job: Job) -> WebhookEvent:
    """Rebuild the event a job stores; its body is parsed again, as the receiver did.

    Raises:
        ConfigurationError: the job is not an inbox job this version wrote (a corrupt row).
    """
    meta = job.meta
    try:
        peer = meta["peer"]
        return WebhookEvent(
            id=str(meta["webhook_id"]),
            type=str(meta["event_type"]),
            timestamp=int(meta["timestamp"]),
            payload=json.loads(job.payload),
            raw_body=bytes(job.payload),
            peer=None if peer is None else _peer_from_record(peer),
            endpoint=job.target,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigurationError(f"inbox job {job.id} is not a stored webhook: {exc!r}") from exc


def _peer_json(peer: PeerIdentity) -> str:
    text = _PEER_JSON.get(peer.fingerprint)
    if text is None:
        if len(_PEER_JSON) >= _MAX_PEERS:
            _PEER_JSON.clear()  # bounded: a flood of distinct certificates cannot grow it
        text = _PEER_JSON[peer.fingerprint] = json.dumps(_peer_record(peer), separators=(",", ":"))
    return text


def _peer_record(peer: PeerIdentity) -> dict[str, Any]:
    record = {name: getattr(peer, name) for name in _PEER_FIELDS}
    record["serial"] = str(peer.serial)  # beyond JSON's safe integers
    record["not_before"] = peer.not_before.isoformat()
    record["not_after"] = peer.not_after.isoformat()
    record["ip_addresses"] = [str(address) for address in peer.ip_addresses]
    for name in ("dns_names", "uris", "emails"):
        record[name] = list(record[name])
    return record


def _peer_from_record(record: dict[str, Any]) -> PeerIdentity:
    values = {name: record[name] for name in _PEER_FIELDS}
    values["serial"] = int(values["serial"])
    values["not_before"] = dt.datetime.fromisoformat(values["not_before"])
    values["not_after"] = dt.datetime.fromisoformat(values["not_after"])
    values["ip_addresses"] = tuple(ipaddress.ip_address(a) for a in values["ip_addresses"])
    for name in ("dns_names", "uris", "emails"):
        values[name] = tuple(values[name])
    return PeerIdentity(**values)
