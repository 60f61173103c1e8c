"""The app's management commands (`manage.py <name>`)."""
