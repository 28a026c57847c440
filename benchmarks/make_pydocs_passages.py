"""Write benchmarks/pydocs_passages.json: openings of held-out Python documentation passages, by kind.

Kinds: prose (a paragraph), code (an interactive `>>>` session or a literal code block), list_table (a
bulleted/numbered list or a grid/simple table) and api (a `.. function::`/`.. method::`/`.. class::`...
entry). Each opening is up to ~500 characters of the text before a block plus the block's first lines; the
model continues from there. Only files of the held-out split (banditspec.training.pydocs.corpus) are used, so no
passage was seen in training. Deterministic: blocks are taken evenly spread over the held-out files.

    .venv/bin/python benchmarks/make_pydocs_passages.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from banditspec.training.pydocs import corpus

OUT = Path(__file__).with_name("pydocs_passages.json")
PER_KIND = 12
PER_FILE = 2
CONTEXT_CHARS = 500

API = re.compile(r"^\.\. (function|method|class|attribute|data|exception|c:function|c:macro|c:type)::")
LIST = re.compile(r"^(\* |- |#\. |\d+\. |\+[-=]+\+|=+ +=+)")
CODE = re.compile(r"^ {2,}(>>> |\S)")


def kind_of(lines: list[str], index: int) -> tuple[str, int] | None:
    """The kind of block starting at lines[index] (preceded by a blank line) and how many lines to show."""
    line = lines[index]
    if API.match(line):
        return "api", 1
    if LIST.match(line):
        return "list_table", 2
    if CODE.match(line) and (lines[index - 2].rstrip().endswith("::") or line.lstrip().startswith(">>> ")):
        return "code", 2
    if line[:1].isalpha() and not line.startswith(".. ") and len(" ".join(lines[index : index + 3])) > 150:
        return "prose", 1
    return None


def candidates(document: corpus.Document) -> dict[str, list[dict]]:
    lines = document.text.splitlines()
    found: dict[str, list[dict]] = {}
    for index in range(2, len(lines) - 4):
        if lines[index - 1].strip() or not lines[index].strip():
            continue
        hit = kind_of(lines, index)
        if hit is None:
            continue
        kind, shown = hit
        before = "\n".join(lines[:index])[-CONTEXT_CHARS:]
        before = before[before.find("\n") + 1 :] if "\n" in before else before  # start at a line boundary
        opening = before + "\n" + "\n".join(lines[index : index + shown]) + "\n"
        found.setdefault(kind, []).append({"file": document.path, "line": index + 1, "text": opening})
    return found


def main() -> None:
    documents = corpus.read_documents(corpus.fetch_deb(Path.home() / ".cache/banditspec/downloads"))
    held = [d for d in documents if d.held_out]
    by_kind: dict[str, list[dict]] = {}
    for document in held:
        for kind, blocks in candidates(document).items():
            step = max(1, len(blocks) // PER_FILE)
            by_kind.setdefault(kind, []).extend(blocks[::step][:PER_FILE])
    passages = []
    for kind in sorted(by_kind):
        blocks = by_kind[kind]
        step = max(1, len(blocks) // PER_KIND)
        for number, block in enumerate(blocks[::step][:PER_KIND]):
            passages.append({"id": f"{kind}-{number:02d}", "kind": kind, **block})
    OUT.write_text(
        json.dumps(
            {
                "description": (
                    "Held-out passage openings for the pydocs family (benchmarks/make_pydocs_passages.py). "
                    "Each 'text' is a raw prompt (no chat template); kinds: prose, code, list_table, api."
                ),
                "source": corpus.SOURCE,
                "prompts": passages,
            },
            indent=1,
            ensure_ascii=False,
        )
        + "\n"
    )
    counts = {kind: sum(p["kind"] == kind for p in passages) for kind in sorted(by_kind)}
    print(f"wrote {OUT}: {len(passages)} passages {counts}")


if __name__ == "__main__":
    main()
