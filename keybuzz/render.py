"""Jinja rendering of `templates/<layer>/...`, shared by deploys and tests (one source of every config).

Example::

    render("haproxy/haproxy.cfg.j2", redis_master="10.0.0.21", rabbitmq=[...])
"""

from __future__ import annotations

import jinja2

from keybuzz import ROOT

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(ROOT / "templates")),
    undefined=jinja2.StrictUndefined,  # a missing variable is an error, never an empty string
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(template: str, **context) -> str:
    """Render one template from templates/ with `context`; unknown variables raise."""
    return _env.get_template(template).render(**context)
