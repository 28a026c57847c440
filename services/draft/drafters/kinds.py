"""The drafter kinds a draft service knows, one line each.

Adding a kind touches its own module and one line here (and its import), nothing else in Python: write
the module (the drafter, its options and `KIND = Kind(...)`, as suffix.py does) and list its KIND below.
On the wire it needs its options message, a field named as the kind in LoadDrafterRequest.options and a
DrafterKind value in proto/banditspec/v1/draft.proto. Spec parsing, USAGE, LoadDrafter and DrafterInfo
all go through this table, and the service serves a drafter by its capability flags (base.Drafter).
"""

from __future__ import annotations

from typing import Any

from services.draft.drafters import model, prompt_lookup, retrieval, suffix
from services.draft.drafters.base import Kind

KINDS: dict[str, Kind[Any]] = {
    kind.name: kind
    for kind in (
        prompt_lookup.KIND,
        model.KIND,
        suffix.KIND,
        retrieval.KIND,
    )
}
