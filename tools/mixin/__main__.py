"""`python tools/mixin`: regenerate the rules and dashboards from alerts/thresholds.yaml."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python tools/mixin`, from any directory
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from exporter.errors import ConfigError
from tools import ROOT
from tools.mixin.render import write_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tools/mixin",
        description="Regenerate alerts/homepage-cms.rules.yml and grafana/dashboards/*.json "
        "from alerts/thresholds.yaml.",
    )
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="repository to write into (default: this one)"
    )
    args = parser.parse_args(argv)
    try:
        for path in write_all(args.root):
            print(f"wrote {path}")
    except ConfigError as exc:
        print(f"tools/mixin: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
