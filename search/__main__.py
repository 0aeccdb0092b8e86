"""`python -m search ...` runs the `autosearch` command line; the launcher starts its
worker processes this way, so they need no console script on the PATH."""

from search.cli import main

main()
