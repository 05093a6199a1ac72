"""``python -m adamkit`` runs the ``adamkit`` command."""

from adamkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
