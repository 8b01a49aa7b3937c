"""Allow ``python -m anomaly``."""

from anomaly.cli.main import main

raise SystemExit(main())
