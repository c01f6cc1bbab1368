"""``python -m extune.cli``: the ``extune`` command."""

from __future__ import annotations

from extune.cli import run

run()
