"""Model and data building: the pydocs family, draft distillation and overlays, retrieval datastores."""
