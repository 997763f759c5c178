"""`python -m beatsight.common`: the `beatsight` command."""

from .cli import main

main()
