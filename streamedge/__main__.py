"""``python -m streamedge`` runs the command-line interface."""

from streamedge.cli import main

raise SystemExit(main())
