"""Drafter kinds, one module each, behind the `Drafter` interface in base.py."""
