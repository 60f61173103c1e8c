"""Capture from ordinary models: creates, updates and deletes of plain Django models recorded as events.

Not every part of a project is event-sourced. A `Supplier` edited in the admin
is an ordinary model, yet the outside world (a search index, a partner's
system) wants to hear of its changes as reliably as of an order's. Listing the
model in `EVENTSOURCING["OUTBOX_CAPTURE_MODELS"]` records each change as an
event, appended in the same transaction as the row's INSERT, UPDATE or DELETE,
so it feeds projections and outbox routes like any other event: no change
without its event, no event without its change.

- Event types: `<app_label>.<ModelName>.created | updated | deleted`;
  stream: `<app_label>.<ModelName>-<pk>` (one stream per row, its history).
- Data: `{"pk": ..., "fields": {...}}`, values JSON-ready (Decimal as a
  string, dates ISO 8601, UUIDs as strings, foreign keys as the related
  primary key). `created` holds every captured field, `updated` only those
  whose value changed plus their `previous` values, `deleted` the last values.
  A save that changes no captured field records nothing.
- Metadata: inside a command, the command's correlation, causation (the
  command id), user and tenant ids.

How the row and its event stay in one transaction: Django sends `post_save`
after the row's write, outside the atomic block of a plain `save()`, so in
autocommit the row would commit before its event is appended. Each captured
model's `save_base` is therefore wrapped in `transaction.atomic(savepoint=False)`:
inside the caller's transaction it joins it for free, and in autocommit it
makes the save and its event one transaction. Deletes need nothing extra:
Django's deletion collector sends `post_delete` inside its own atomic block.

Not captured (no signal is sent): `bulk_create`, `bulk_update`,
`QuerySet.update()`, raw SQL, many-to-many changes, and fixture loading (raw
saves). `QuerySet.delete()` and cascades are captured, one event per row,
since Django sends `post_delete` for each deleted object.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import enum
import functools
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import Error, register
from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured, ValidationError
from django.core.signals import setting_changed
from django.db import connections, models, router, transaction
from django.db.models.fields.files import FieldFile
from django.db.models.signals import post_delete, post_init, post_save
from django.utils.duration import duration_iso_string
from django.utils.functional import Promise

from ..commands.bus import current_context
from ..conf import es_settings
from ..store import EventStore, Metadata, NewEvent

__all__ = [
    "CREATED",
    "DELETED",
    "UPDATED",
    "CaptureSpec",
    "capture_specs",
    "connect_capture",
    "disconnect_capture",
    "json_ready",
]

logger = logging.getLogger(__name__)

CREATED, UPDATED, DELETED = "created", "updated", "deleted"
SETTING = "OUTBOX_CAPTURE_MODELS"
ENTRY_KEYS = frozenset({"model", "fields", "exclude"})
# The instance attribute holding its captured values as last loaded or saved (a _Snapshot).
_SNAPSHOT = "_eventsourcing_capture_snapshot"
# Marks our wrappers of a model's methods, and keeps what the class itself defined before them.
_ORIGINAL = "_eventsourcing_capture_original"
_INHERITED = object()


@dataclass(frozen=True)
class CaptureSpec:
    """One captured model and the concrete fields its events record (the primary key is always `pk`)."""

    model: type[models.Model]
    fields: tuple[models.Field, ...]

    @property
    def label(self) -> str:
        return self.model._meta.label

    def event_type(self, change: str) -> str:
        return f"{self.label}.{change}"

    def stream_id(self, pk: Any) -> str:
        return f"{self.label}-{json_ready(pk)}"


# ---------------------------------------------------------------- the setting


def capture_specs(entries: Any) -> list[CaptureSpec]:
    """Parse OUTBOX_CAPTURE_MODELS: "app_label.ModelName" strings or {"model", "fields", "exclude"} dicts.

    Raises:
        ImproperlyConfigured: naming the entry and what is wrong with it.
    """
    if not isinstance(entries, list | tuple):
        raise ImproperlyConfigured(f"EVENTSOURCING[{SETTING!r}] must be a list, got {type(entries).__name__}.")
    specs: dict[type[models.Model], CaptureSpec] = {}
    for entry in entries:
        spec = _spec_of_entry(entry)
        if spec.model in specs:
            raise ImproperlyConfigured(f"EVENTSOURCING[{SETTING!r}] lists {spec.label} twice.")
        specs[spec.model] = spec
    return list(specs.values())


def _spec_of_entry(entry: Any) -> CaptureSpec:
    if isinstance(entry, str):
        entry = {"model": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
        raise ImproperlyConfigured(
            f'EVENTSOURCING[{SETTING!r}]: {entry!r} is neither "app_label.ModelName" nor a dict with a "model" key.'
        )
    if unknown := set(entry) - ENTRY_KEYS:
        raise ImproperlyConfigured(
            f"EVENTSOURCING[{SETTING!r}]: unknown keys {sorted(unknown)} in the entry for {entry['model']!r}; "
            f"allowed: {sorted(ENTRY_KEYS)}."
        )
    model = _model(entry["model"])
    named = entry.get("fields")
    fields = [_field(model, name) for name in _names(entry, "fields")] if named is not None else _all_fields(model)
    excluded = {_field(model, name) for name in _names(entry, "exclude")}
    pk = model._meta.pk
    return CaptureSpec(model, tuple(f for f in dict.fromkeys(fields) if f not in excluded and f is not pk))


def _model(label: str) -> type[models.Model]:
    try:
        model = apps.get_model(label)
    except (LookupError, ValueError) as exc:
        raise ImproperlyConfigured(f"EVENTSOURCING[{SETTING!r}]: no model {label!r} ({exc}).") from None
    if model._meta.proxy:
        concrete = model._meta.concrete_model._meta.label
        raise ImproperlyConfigured(
            f"EVENTSOURCING[{SETTING!r}]: {label} is a proxy; list its concrete model {concrete} "
            "(saves through its proxies are captured with it)."
        )
    return model


def _names(entry: dict[str, Any], key: str) -> list[str]:
    names = entry.get(key) or []
    if not isinstance(names, list | tuple) or not all(isinstance(name, str) for name in names):
        raise ImproperlyConfigured(
            f"EVENTSOURCING[{SETTING!r}]: {key!r} of {entry['model']} must be a list of field names."
        )
    return list(names)


def _field(model: type[models.Model], name: str) -> models.Field:
    try:
        found = model._meta.get_field(name)
    except FieldDoesNotExist:
        raise ImproperlyConfigured(f"EVENTSOURCING[{SETTING!r}]: {model._meta.label} has no field {name!r}.") from None
    if not getattr(found, "concrete", False) or found.many_to_many:
        raise ImproperlyConfigured(
            f"EVENTSOURCING[{SETTING!r}]: {model._meta.label}.{name} is not a column of its table "
            "(many-to-many and reverse relations are not captured)."
        )
    return found  # type: ignore[return-value]


def _all_fields(model: type[models.Model]) -> list[models.Field]:
    return list(model._meta.concrete_fields)


@register()
def capture_models_check(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """An OUTBOX_CAPTURE_MODELS entry naming a missing model or field is reported by `manage.py check`."""
    try:
        capture_specs(_configured_entries())
    except ImproperlyConfigured as exc:
        return [Error(str(exc), id="eventsourcing_app.E030")]
    return []


def _configured_entries() -> Any:
    """The setting's entries; none when EVENTSOURCING itself is not a dict (check E001 reports that)."""
    if not isinstance(getattr(settings, "EVENTSOURCING", {}) or {}, dict):
        return []
    return es_settings.OUTBOX_CAPTURE_MODELS


# ---------------------------------------------------------------- wiring

# The models captured now, by concrete model; rebuilt when EVENTSOURCING changes.
_specs: dict[type[models.Model], CaptureSpec] = {}
_senders: list[type[models.Model]] = []


def connect_capture() -> None:
    """(Re)connect the capture receivers for the current setting; called from `AppConfig.ready()`.

    An invalid setting captures nothing and is logged; `manage.py check`
    (and so `runserver` and `migrate`) reports it as eventsourcing_app.E030.
    """
    disconnect_capture()
    try:
        specs = capture_specs(_configured_entries())
    except ImproperlyConfigured as exc:
        logger.error("Capture from models is off: %s", exc)
        return
    for spec in specs:
        _specs[spec.model] = spec
        _wrap_methods(spec.model)
        for sender in _senders_of(spec.model):
            for signal, receiver in _RECEIVERS:
                signal.connect(receiver, sender=sender, weak=False, dispatch_uid=_uid(receiver, sender))
            _senders.append(sender)


def disconnect_capture() -> None:
    """Capture nothing: disconnect every receiver and restore the models' own methods."""
    for sender in _senders:
        for signal, receiver in _RECEIVERS:
            signal.disconnect(sender=sender, dispatch_uid=_uid(receiver, sender))
    for model in _specs:
        _unwrap_methods(model)
    _senders.clear()
    _specs.clear()


def _senders_of(model: type[models.Model]) -> list[type[models.Model]]:
    """The model and its proxies: Django sends a proxy instance's signals with the proxy as sender."""
    proxies = [m for m in apps.get_models() if m._meta.proxy and m._meta.concrete_model is model]
    return [model, *proxies]


def _uid(receiver: Callable[..., Any], sender: type[models.Model]) -> str:
    return f"eventsourcing_app.capture.{receiver.__name__}:{sender._meta.label}"


def _install(model: type[models.Model], name: str, wrapper: Callable[..., Any]) -> None:
    """Set `wrapper` as the model's method `name`, remembering what the class itself defined."""
    setattr(wrapper, _ORIGINAL, model.__dict__.get(name, _INHERITED))
    setattr(model, name, wrapper)


def _uninstall(model: type[models.Model], name: str) -> None:
    wrapper = model.__dict__.get(name)
    if wrapper is None or not hasattr(wrapper, _ORIGINAL):
        return
    original = getattr(wrapper, _ORIGINAL)
    if original is _INHERITED:
        delattr(model, name)
    else:
        setattr(model, name, original)


def _wrap_methods(model: type[models.Model]) -> None:
    _install(model, "save_base", _atomic_save_base(model.save_base))
    _install(model, "refresh_from_db", _remembering_refresh(model.refresh_from_db))


def _unwrap_methods(model: type[models.Model]) -> None:
    _uninstall(model, "save_base")
    _uninstall(model, "refresh_from_db")


def _atomic_save_base(inherited: Callable[..., None]) -> Callable[..., None]:
    """Make `save()` and its `post_save` (where the event is appended) one transaction, even in autocommit."""

    @functools.wraps(inherited)
    def save_base(  # noqa: PLR0917 (Django's own signature, positional arguments included)
        self: models.Model,
        raw: bool = False,
        force_insert: Any = False,
        force_update: bool = False,
        using: str | None = None,
        update_fields: Iterable[str] | None = None,
    ) -> None:
        using = using or router.db_for_write(type(self), instance=self)
        # savepoint=False: inside the caller's transaction this costs nothing; a failure fails that transaction.
        with transaction.atomic(using=using, savepoint=False):
            inherited(
                self,
                raw=raw,
                force_insert=force_insert,
                force_update=force_update,
                using=using,
                update_fields=update_fields,
            )

    return save_base


def _remembering_refresh(inherited: Callable[..., None]) -> Callable[..., None]:
    """Values reloaded by `refresh_from_db()` (a deferred field read, too) are what the row holds: remember them.

    Otherwise the next save would report them as changes, though they only
    caught up with the database.
    """

    @functools.wraps(inherited)
    def refresh_from_db(self: models.Model, *args: Any, **kwargs: Any) -> None:
        inherited(self, *args, **kwargs)
        spec = _specs.get(type(self)._meta.concrete_model)
        if spec is not None:
            fields = kwargs.get("fields", args[1] if len(args) > 1 else None)
            names = None if fields is None else {f.name for f in spec.fields if {f.name, f.attname} & set(fields)}
            values = {**_loaded(self), **_values(spec, self, names)}
            self.__dict__[_SNAPSHOT] = _Snapshot(values)

    return refresh_from_db


def _reconnect_on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    # conf's own receiver, connected first, has already dropped es_settings' cache.
    if setting == "EVENTSOURCING" and apps.ready:
        connect_capture()


setting_changed.connect(_reconnect_on_setting_changed)


# ---------------------------------------------------------------- snapshots of loaded values


@dataclass
class _Snapshot:
    """Captured values as last loaded or saved, valid once its transaction commits.

    A save that is rolled back must not count: the row keeps its old values, so
    the next save has to be compared with them. Each snapshot taken at a save
    registers an on-commit callback; while the callback waits in the
    connection's queue the transaction is open, once it ran it committed, and
    if it vanished (the transaction or savepoint rolled back) the snapshot is
    discarded in favour of the one before it.
    """

    values: dict[str, Any]
    using: str | None = None
    previous: _Snapshot | None = None
    committed: bool = True
    _callback: Callable[[], None] | None = field(default=None, repr=False)

    @classmethod
    def after_save(cls, values: dict[str, Any], using: str, previous: _Snapshot | None) -> _Snapshot:
        snapshot = cls(values, using, previous, committed=False)
        snapshot._callback = snapshot._commit
        transaction.on_commit(snapshot._callback, using=using)
        return snapshot

    def _commit(self) -> None:
        self.committed, self.previous = True, None

    def _rolled_back(self) -> bool:
        if self.committed:
            return False
        pending = connections[self.using].run_on_commit  # type: ignore[index]
        return not any(callback is self._callback for _, callback, _ in pending)

    def current(self) -> _Snapshot | None:
        """The newest snapshot that was not rolled back."""
        snapshot: _Snapshot | None = self
        while snapshot is not None and snapshot._rolled_back():
            snapshot = snapshot.previous
        return snapshot


def _loaded(instance: models.Model) -> dict[str, Any]:
    snapshot = instance.__dict__.get(_SNAPSHOT)
    current = snapshot.current() if snapshot is not None else None
    return current.values if current is not None else {}


# ---------------------------------------------------------------- values


def json_ready(value: Any) -> Any:
    """A model value as plain JSON: Decimal → string, dates → ISO 8601, UUID → string, bytes → base64."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, enum.Enum):
        return json_ready(value.value)
    if isinstance(value, str):  # a subclass, such as Django's SafeString: JSON encoders want the plain type
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, decimal.Decimal | uuid.UUID | Promise):
        return str(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return duration_iso_string(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, FieldFile):
        return value.name or None
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_ready(item) for item in value]
    return str(value)


def _value(model_field: models.Field, instance: models.Model) -> Any:
    """The field's value as the database will hold it (e.g. "3.50" assigned to a DecimalField → Decimal)."""
    raw = model_field.value_from_object(instance)
    try:
        value = model_field.to_python(raw)
    except ValidationError:
        value = raw
    return json_ready(value)


def _values(spec: CaptureSpec, instance: models.Model, names: Iterable[str] | None = None) -> dict[str, Any]:
    """Captured values by field name, skipping deferred fields (reading one would cost a query)."""
    wanted = None if names is None else set(names)
    return {
        f.name: _value(f, instance)
        for f in spec.fields
        if f.attname in instance.__dict__ and (wanted is None or f.name in wanted)
    }


# ---------------------------------------------------------------- receivers


def _remember(sender: type[models.Model], *, instance: models.Model, **kwargs: Any) -> None:
    """post_init: keep the values as loaded, to tell at save which ones changed."""
    spec = _specs.get(sender._meta.concrete_model)
    if spec is not None:
        instance.__dict__[_SNAPSHOT] = _Snapshot(_values(spec, instance))


def _on_save(
    sender: type[models.Model],
    *,
    instance: models.Model,
    created: bool,
    raw: bool,
    using: str,
    update_fields: frozenset[str] | None,
    **kwargs: Any,
) -> None:
    """post_save: append `created` (all captured fields) or `updated` (the changed ones, if any)."""
    spec = _specs.get(sender._meta.concrete_model)
    if spec is None or raw:
        return
    saved = _values(spec, instance, _update_field_names(spec, update_fields))
    before = _loaded(instance)
    if created:
        _append(spec, instance, CREATED, {"fields": saved}, using)
    else:
        changed = {name: value for name, value in saved.items() if name not in before or before[name] != value}
        if changed:
            previous = {name: before[name] for name in changed if name in before}
            _append(spec, instance, UPDATED, {"fields": changed, "previous": previous}, using)
    values = saved if created else {**before, **saved}
    instance.__dict__[_SNAPSHOT] = _Snapshot.after_save(values, using, instance.__dict__.get(_SNAPSHOT))


def _update_field_names(spec: CaptureSpec, update_fields: frozenset[str] | None) -> set[str] | None:
    """`update_fields` may name a foreign key by its attname ("supplier_id"): map to field names."""
    if update_fields is None:
        return None
    meta = spec.model._meta
    return {meta.get_field(name).name for name in update_fields}


def _on_delete(sender: type[models.Model], *, instance: models.Model, using: str, **kwargs: Any) -> None:
    """post_delete (inside the deletion's transaction): append `deleted` with the last values."""
    spec = _specs.get(sender._meta.concrete_model)
    if spec is not None:
        _append(spec, instance, DELETED, {"fields": _values(spec, instance)}, using)


def _append(spec: CaptureSpec, instance: models.Model, change: str, data: dict[str, Any], using: str) -> None:
    context = current_context()
    metadata: Metadata = context.metadata() if context is not None else {}
    event = NewEvent(event_type=spec.event_type(change), data={"pk": json_ready(instance.pk), **data})
    EventStore(using=using).append(spec.stream_id(instance.pk), [event], metadata=metadata)


_RECEIVERS: tuple[tuple[models.signals.ModelSignal, Callable[..., None]], ...] = (
    (post_init, _remember),
    (post_save, _on_save),
    (post_delete, _on_delete),
)
