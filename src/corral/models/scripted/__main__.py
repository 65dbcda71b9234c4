"""``python -m corral.models.scripted SCRIPT --port N [--record FILE]``: serve a script in the foreground."""

from corral.models.scripted.server import main

raise SystemExit(main())
