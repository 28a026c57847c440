"""The `banditspec` command and the local stack launcher: the only package code that imports `services`."""

from banditspec.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
