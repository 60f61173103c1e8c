"""JSON encoding of event data and metadata, exact for Decimal, datetime, date and UUID.

msgspec writes Decimal as a string and datetime as RFC 3339 with its offset,
and reads them back by the event class's field types, so a round trip returns
an equal object. It also parses straight from the stored JSON text, which keeps
aggregate loading fast.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..conf import es_settings
from .events import event_registry

_encoder = msgspec.json.Encoder(decimal_format="string")
_decoder = msgspec.json.Decoder()


def encode_data(event_type: str, data: Any, metadata: dict[str, Any]) -> str:
    """The JSON text stored for an event's data (encrypted by FIELD_CIPHER, when set)."""
    cipher = es_settings.FIELD_CIPHER
    if cipher is not None:
        data = cipher.encrypt(event_type, msgspec.to_builtins(data), metadata)
    return _encoder.encode(data).decode()


def encode_metadata(metadata: dict[str, Any]) -> str:
    return _encoder.encode(metadata).decode()


def decode_metadata(raw: str | bytes | dict[str, Any]) -> dict[str, Any]:
    return raw if isinstance(raw, dict) else _decoder.decode(raw)


def decode_data(
    event_type: str, schema_version: int, raw: str | bytes | dict[str, Any], metadata: dict[str, Any]
) -> tuple[int, Any]:
    """Read stored data back as an instance of its event class (or a dict if none is registered).

    Returns the schema version the data is at after upcasting.
    """
    cipher, upcaster = es_settings.FIELD_CIPHER, es_settings.UPCASTER
    cls = event_registry.get(event_type)
    if cipher is None and upcaster is None and not isinstance(raw, dict):
        return schema_version, (_decoder.decode(raw) if cls is None else msgspec.json.decode(raw, type=cls))
    data = raw if isinstance(raw, dict) else _decoder.decode(raw)
    if cipher is not None:
        data = cipher.decrypt(event_type, data, metadata)
    if upcaster is not None:
        schema_version, data = upcaster.upcast(event_type, schema_version, data)
    return schema_version, (data if cls is None else msgspec.convert(data, type=cls, strict=False))
