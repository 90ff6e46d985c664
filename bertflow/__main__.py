"""``python -m bertflow`` is the same CLI as ``bertflow``."""

from bertflow.flows.cli import main

main()
