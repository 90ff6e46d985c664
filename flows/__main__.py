"""``python -m flows`` is the same CLI as ``bertflow``."""

from flows.cli import main

main()
