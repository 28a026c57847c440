"""Drafter kinds, one module each (its drafter and its `KIND` declaration), behind the `Drafter` interface in
base.py; kinds.py lists them."""
