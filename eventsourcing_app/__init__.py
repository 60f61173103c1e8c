"""Event sourcing and CQRS for Django."""

__version__ = "0.1.0"
