"""Self-distilled chat drafts for SmolLM2."""
