"""Allow ``python -m anomaly``."""

from anomaly.cli import main

raise SystemExit(main())
