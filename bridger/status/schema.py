"""The documented shape of the status document, and a small validator for it.

``STATUS_SCHEMA`` is a JSON-Schema-like dict (the subset understood by
:func:`validate`: ``type``, ``properties``, ``required``,
``additionalProperties``, ``items``, ``enum``, ``minimum``, ``maximum``).  It is the
contract of ``bridger status --json`` described in ``docs/status.md``; tests
validate real snapshots against it so code and documentation cannot drift.
Keeping our own validator avoids a jsonschema dependency for ~60 lines.
"""

from __future__ import annotations

from typing import Any

from bridger.dataplane.accounting import DAEMON_DROP_REASONS, KINDS
from bridger.status.document import MODES, PEER_STATES, SCHEMA_VERSION

#: The guards' DHCP / RA modes as the document shows them (bridger.guard.policy.MODES;
#: a test holds the two equal, so that status/ need not import the guard).
GUARD_MODES = ("shared", "local")

_COUNT: dict[str, Any] = {"type": "integer", "minimum": 0}
_AGE: dict[str, Any] = {"type": ["number", "null"], "minimum": 0}
_PER_DIRECTION: dict[str, Any] = {
    "type": "object",
    "properties": {"tx": _COUNT, "rx": _COUNT},
    "required": ["tx", "rx"],
    "additionalProperties": False,
}
_KINDS: dict[str, Any] = {
    "type": "object",
    "properties": {kind: _COUNT for kind in KINDS},
    "required": list(KINDS),
    "additionalProperties": False,
}
_KINDS_PER_DIRECTION: dict[str, Any] = {
    "type": "object",
    "properties": {"tx": _KINDS, "rx": _KINDS},
    "required": ["tx", "rx"],
    "additionalProperties": False,
}
_DROPS: dict[str, Any] = {
    "type": "object",
    "required": list(DAEMON_DROP_REASONS),
    "additionalProperties": _COUNT,
}
_MAC_SIDE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "count": _COUNT,
        "capacity": {"type": "integer", "minimum": 1},
        "evicted": _COUNT,
        "top": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "mac": {"type": "string"},
                    "frames": _COUNT,
                    "bytes": _COUNT,
                    "last_seen_age": {"type": "number", "minimum": 0},
                },
                "required": ["mac", "frames", "bytes", "last_seen_age"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["count", "capacity", "evicted", "top"],
    "additionalProperties": False,
}
_SECONDS: dict[str, Any] = {"type": "number", "minimum": 0}
_TOKENS: dict[str, Any] = {"type": ["number", "null"], "minimum": 0}


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None,
            nullable: bool = False) -> dict[str, Any]:
    """A closed object: every key of ``required`` present, those of ``optional`` allowed."""
    return {
        "type": ["object", "null"] if nullable else "object",
        "properties": {**required, **(optional or {})},
        "required": list(required),
        "additionalProperties": False,
    }


#: ``peers[].guard``: ``Guard.snapshot(now)`` (bridger/guard/policy.py).  The loop
#: fields beyond ``loop`` come from ``PeerLoop.snapshot`` and are there only with
#: loop protection on.
_PEER_GUARD = _object(
    {
        "loop": {"type": "boolean"},
        "dhcp": {"type": "string", "enum": list(GUARD_MODES)},
        "ra": {"type": "string", "enum": list(GUARD_MODES)},
        "vlans": {"type": ["array", "null"],
                  "items": {"type": "integer", "minimum": 1, "maximum": 4094}},
        "untagged": {"type": "boolean"},
        "flood_rate": _COUNT,
        "flood_burst": _COUNT,
        "loop_protection": {"type": "boolean"},
        "flood_tokens": _TOKENS,
        "nd_tokens": _TOKENS,
    },
    {
        "loop_for": _SECONDS,
        "loop_via": {"type": ["string", "null"]},
        "hold": _SECONDS,
        "loops_detected": _COUNT,
        "probes_sent": _COUNT,
        "probes_returned": _COUNT,
        "probed_by_hub": {"type": "boolean"},
    },
    nullable=True,
)
#: Top-level ``guard``: ``LoopDetector.snapshot(now)`` (bridger/guard/loop.py, flaps.py).
_DEVICE_GUARD = _object(
    {
        "site_id": {"type": "string"},
        "loops_detected": _COUNT,
        "blocked": {"type": "array", "items": {"type": "string"}},
        "stale_probes": _COUNT,
        "via_blocked": _COUNT,
        "cut_between_peers": _COUNT,
        "relayed": _COUNT,
        "mac_flaps": _object({
            "total": _COUNT,
            "rate": _SECONDS,
            "tracked": _COUNT,
            "evicted": _COUNT,
            "worst": {"type": "array", "items": _object({
                "mac": {"type": "string"},
                "flaps": _COUNT,
                "recent": _COUNT,
                "sides": {"type": "array", "items": {"type": "string"}},
                "last_flap_age": _SECONDS,
            })},
        }),
    },
    nullable=True,
)
_PEER_FIELDS: dict[str, Any] = {
    "name": {"type": "string"},
    "public_key": {"type": "string"},
    "host": {"type": ["string", "null"]},
    "tap": {"type": "string"},
    "state": {"type": "string", "enum": list(PEER_STATES)},
    "endpoint": {"type": ["string", "null"]},
    "session_age": _AGE,
    "last_handshake_age": _AGE,
    "handshakes": _COUNT,
    "rekeys": _COUNT,
    "rtt_ms": _AGE,
    "path_mtu": _COUNT,
    "path_mtu_source": {"type": "string"},
    "path": {"type": "string", "enum": ["direct", "relayed", "none"]},
    "via": {"type": ["string", "null"]},
    "endpoint_source": {"type": "string"},
    "frames": _PER_DIRECTION,
    "bytes": _PER_DIRECTION,
    "kinds": _KINDS_PER_DIRECTION,
    "drops": _DROPS,
    "fragments": {"type": "object", "additionalProperties": _COUNT},
    "macs": {
        "type": "object",
        "properties": {"remote": _MAC_SIDE},
        "required": ["remote"],
        "additionalProperties": False,
    },
    "guard": _PEER_GUARD,
}
_PEER: dict[str, Any] = {
    "type": "object",
    "properties": _PEER_FIELDS,
    "required": list(_PEER_FIELDS),
    "additionalProperties": False,
}
_TOP_FIELDS: dict[str, Any] = {
    "version": {"type": "integer", "enum": [SCHEMA_VERSION]},
    "mode": {"type": "string", "enum": list(MODES)},
    "data_path": {"type": "string"},
    "interface": {"type": "object", "additionalProperties": {"type": "string"}},
    "frames": _PER_DIRECTION,
    "bytes": _PER_DIRECTION,
    "kinds": _KINDS_PER_DIRECTION,
    "drops": _DROPS,
    "device_drops": _DROPS,
    "macs": {
        "type": "object",
        "properties": {"local": _MAC_SIDE},
        "required": ["local"],
        "additionalProperties": False,
    },
    "guard": _DEVICE_GUARD,
    "peers": {"type": "array", "items": _PEER},
}

#: Optional ``ha`` (two gateways per site): ``HaRunner.snapshot()`` (bridger/ha/runner.py).
_HA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "mode": {"type": "string", "enum": ["elect", "follow"]},
        "role": {"type": "string", "enum": ["listening", "standby", "active"]},
        "role_age": _SECONDS,
        "changes": _COUNT,
    },
    "required": ["mode", "role", "role_age", "changes"],
}

STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {**_TOP_FIELDS, "ha": _HA},
    "required": list(_TOP_FIELDS),
    "additionalProperties": False,
}


class SchemaError(ValueError):
    """A document does not match a schema; the message names the JSON path."""


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def _is_type(value: Any, name: str) -> bool:
    if isinstance(value, bool) and name in ("integer", "number"):
        return False  # JSON booleans are not numbers, though Python says so
    return isinstance(value, _TYPES[name])


def validate(doc: Any, schema: dict[str, Any] = STATUS_SCHEMA, path: str = "$") -> None:
    """Raise :class:`SchemaError` if ``doc`` does not match ``schema``."""
    expected = schema.get("type")
    if expected is not None:
        names = expected if isinstance(expected, list) else [expected]
        if not any(_is_type(doc, name) for name in names):
            raise SchemaError(f"{path}: expected {'/'.join(names)}, got {type(doc).__name__}")
    if "enum" in schema and doc not in schema["enum"]:
        raise SchemaError(f"{path}: {doc!r} not one of {schema['enum']!r}")
    if "minimum" in schema and _is_type(doc, "number") and doc < schema["minimum"]:
        raise SchemaError(f"{path}: {doc!r} is below {schema['minimum']!r}")
    if "maximum" in schema and _is_type(doc, "number") and doc > schema["maximum"]:
        raise SchemaError(f"{path}: {doc!r} is above {schema['maximum']!r}")
    if isinstance(doc, dict):
        properties: dict[str, Any] = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in doc:
                raise SchemaError(f"{path}: missing required key {key!r}")
        extra = schema.get("additionalProperties", True)
        for key, value in doc.items():
            if not isinstance(key, str):
                raise SchemaError(f"{path}: non-string key {key!r}")
            if key in properties:
                validate(value, properties[key], f"{path}.{key}")
            elif extra is False:
                raise SchemaError(f"{path}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                validate(value, extra, f"{path}.{key}")
    if isinstance(doc, list) and "items" in schema:
        for index, item in enumerate(doc):
            validate(item, schema["items"], f"{path}[{index}]")
