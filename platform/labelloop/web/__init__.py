"""The dashboard: server-rendered pages (Jinja2 templates and static files shipped in this
package) that `labelloop serve` mounts at `/` next to the API."""
