"""`python -m tracker.cli`, as the `tracker` console script."""

from tracker.cli import main

main()
