"""Pull-request titles and bodies, rendered from ``templates/*.md.j2`` (shipped as package data).

One template per kind of pull request (``release``, ``promote``, ``rollback``, ``retrain``); each sets
its ``title`` (the pull request's and the commit's first line) and renders its body, which opens with
that title as a heading. ``_rollout.md.j2`` holds what the rollout bodies share: the before/after
table and the optional sections (shown with a blank line before them, left out where empty).
Markdown, not HTML: nothing is escaped; what a template shows comes from the manifests, the registry
and the steps' own reports.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from jinja2 import Environment, PackageLoader, StrictUndefined


@dataclass(frozen=True)
class Text:
    title: str
    body: str


def render(template: str, **context) -> Text:
    """The title the template sets and the body it renders (ending in a newline)."""
    module = _environment().get_template(template).make_module(context)
    return Text(title=str(module.title), body=str(module))


@functools.cache
def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("model.deploy", "templates"),
        autoescape=False,  # markdown for GitHub, which renders it safely; HTML escapes would show as text
        undefined=StrictUndefined,  # a misspelt name fails the step instead of leaving a blank in the body
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
