"""`python -m exporter.mixin [ROOT]`: regenerate rules and dashboard from the thresholds file."""

from __future__ import annotations

import sys
from pathlib import Path

from exporter.errors import ConfigError
from exporter.mixin.render import write_all


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()
    try:
        for path in write_all(root):
            print(f"wrote {path}")
    except ConfigError as exc:
        print(f"exporter.mixin: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
