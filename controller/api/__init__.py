"""The controller's JSON API (routers per resource under ``routes``)."""
