"""``python -m gmnn.cli``: the ``gmnn`` command."""

from gmnn.cli import main

main()
