"""`python -m exporter`: the command line (exporter/cli.py)."""

try:
    from exporter.cli import main
except KeyboardInterrupt:  # Ctrl-C while the program is still loading: no traceback
    raise SystemExit(130) from None

raise SystemExit(main())
