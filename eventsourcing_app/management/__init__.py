"""Management commands of the event sourcing app."""
