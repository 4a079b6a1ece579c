"""``python -m spectraseg`` is the same as the ``spectraseg`` command."""

from spectraseg.cli import main

raise SystemExit(main())
