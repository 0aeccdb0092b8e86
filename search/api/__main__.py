"""`python -m autosearch ...` runs the command line; the launcher starts its worker
processes this way, so they need no console script on the PATH."""

from autosearch.search.cli import main

main()
