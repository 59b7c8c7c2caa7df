"""Server-rendered pages (Jinja2 + HTMX): they render what domain services return."""
