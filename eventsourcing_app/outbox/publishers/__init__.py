"""Outbox publishers: the base class and the shipped ones (import each by its module path)."""

from .base import OutgoingMessage, Publisher

__all__ = ["OutgoingMessage", "Publisher"]
