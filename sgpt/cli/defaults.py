"""The embedded default (sgpt.core.default) as the tools use it with no model flags."""

from __future__ import annotations

import click

from sgpt.core.default import Default, installed, load_default


def embedded_default(tool: str, flags: str, missing: str) -> Default:
    """The default ``tool`` uses when given none of ``flags``; its note goes to stderr.

    A usage error saying ``missing`` (what to pass) when no default is installed; a
    CheckpointError naming the file when the one there is broken.
    """
    if not installed():
        raise click.UsageError(missing)
    found = load_default()
    click.echo(found.note(tool, flags), err=True)
    return found
