"""The pydocs model family: a small target and its distilled drafts, trained on the Python docs."""
