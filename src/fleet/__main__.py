from __future__ import annotations

import sys

try:
    from fleet.cli import main
except KeyboardInterrupt:  # before cli.py's own guard is reached
    sys.stderr.write("fleet: interrupted\n")
    raise SystemExit(130) from None

raise SystemExit(main())
