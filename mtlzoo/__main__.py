"""``python -m mtlzoo`` (what ``torchrun -m mtlzoo`` runs)."""

from mtlzoo.cli import main

raise SystemExit(main())
