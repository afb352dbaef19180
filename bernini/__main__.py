"""``python -m bernini`` runs the command line."""

from bernini.frontends.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
