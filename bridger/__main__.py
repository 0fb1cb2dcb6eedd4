"""Allow ``python -m bridger``."""

from bridger.cli import main

raise SystemExit(main())
