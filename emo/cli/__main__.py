"""``python -m emo.cli``."""

from emo.cli import main

main()
