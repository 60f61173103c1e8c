"""Commands, their handlers and the command bus."""

from .base import Command, CommandContext, CommandResult
from .bus import CommandBus, dispatch
from .middleware import Middleware
from .registry import command_registry, handles, permission_codename

__all__ = [
    "Command",
    "CommandBus",
    "CommandContext",
    "CommandResult",
    "Middleware",
    "command_registry",
    "dispatch",
    "handles",
    "permission_codename",
]
