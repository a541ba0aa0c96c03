"""`python -m perstack_sandbox` runs the CLI."""

from perstack_sandbox.cli import main

main()
