"""Type aliases shared by the app's layers."""

from typing import Any, TypeAlias

JSONDict: TypeAlias = dict[str, Any]
StreamId: TypeAlias = str
