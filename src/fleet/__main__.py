from __future__ import annotations

from fleet.cli import main

raise SystemExit(main())
