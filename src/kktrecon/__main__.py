"""``python -m kktrecon``: the command line."""

from kktrecon.cli import main

main()
