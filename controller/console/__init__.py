"""The server-rendered web console (Jinja2 pages, static JS with no CDN)."""
