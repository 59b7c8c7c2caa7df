"""Server-rendered pages (Jinja2 + HTMX). Pages render what domain services return; no queries here."""
