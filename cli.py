"""Run slice2d from a checkout without installing: ``python cli.py --help``."""
from slice2d.cli import run

run()
