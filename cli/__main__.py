"""``python -m extune.cli``: the ``extune`` command."""

from __future__ import annotations

import sys

from extune.cli import main

sys.exit(main())
