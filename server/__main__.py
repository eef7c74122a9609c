"""`python -m server` is the `pomar` command."""

from server.cli import main

raise SystemExit(main())
