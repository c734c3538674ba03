"""``python -m psysim`` runs the command-line interface."""

from .cli import main

main()
