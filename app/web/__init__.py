"""The browser dashboard: its pages, templates and static files."""
