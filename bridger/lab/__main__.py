"""``python3 -m bridger.lab``: see :func:`bridger.lab.cli.main`."""

from __future__ import annotations

from bridger.lab.cli import main

raise SystemExit(main())
