"""``python -m hallway``."""

from hallway.cli import main

raise SystemExit(main())
