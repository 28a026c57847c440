"""Where a round's overhead (wall − the services' compute) goes, exchange by exchange: the controller's own
session classes (services/controller/clients.py) drive a local target and draft service in this process,
greedy, one prompt-lookup arm, and time the Propose and the Verify exchange each against the compute its
service reports.

    PYTHONPATH=. python benchmarks/round_breakdown.py [--prompts 4] [--max-new-tokens 64] [--repeats 3]

Needs the default model. The services listen on TCP loopback and on Unix sockets; each repeat drives the
prompts over one, then the other.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from transformers import AutoTokenizer

from banditspec.bench.config import FAMILIES
from banditspec.bench.workload import load_prompts, render_prompts
from banditspec.cli.launcher import LocalStack
from banditspec.model_paths import resolve_model_path
from banditspec.sampling import SamplingParams
from services.controller.clients import DraftClient, TargetClient
from services.controller.domain import NO_DRAFT, Deadline


def ms(values: list[float]) -> str:
    return f"{1e3 * statistics.median(values):.2f}" if values else "-"


async def drive(
    target_address: str, draft_address: str, prompts: list[list[int]], max_new: int, gamma: int
) -> dict[str, list[float]]:
    target = TargetClient(target_address)
    draft = DraftClient("local", draft_address)
    info = await target.connect(timeout=30)
    await draft.refresh(info.vocab_fingerprint, timeout=30)
    drafter = draft.drafters[0].name
    figures: dict[str, list[float]] = {"propose": [], "verify after a draft": [], "round": [], "verify alone": []}
    for prompt_ids in prompts:
        for drafted in (True, False):
            deadline = Deadline(None, rpc_timeout=30)
            session_id = uuid.uuid4().hex
            target_session = target.session(session_id, SamplingParams(), 0, deadline)
            draft_session = draft.session(session_id, SamplingParams(), 0, deadline)
            context = list(prompt_ids)
            await target_session.open(context)
            while len(context) - len(prompt_ids) < max_new:
                start = time.perf_counter()
                proposal = NO_DRAFT
                if drafted:
                    proposal = await draft_session.propose(context, drafter, gamma)
                    figures["propose"].append(time.perf_counter() - start - proposal.compute_seconds)
                verify_start = time.perf_counter()
                verdict = await target_session.verify(context, proposal)
                end = time.perf_counter()
                name = "verify after a draft" if drafted else "verify alone"
                figures[name].append(end - verify_start - verdict.compute_seconds)
                if drafted:
                    figures["round"].append(end - start - proposal.compute_seconds - verdict.compute_seconds)
                context.extend(verdict.token_ids)
            await asyncio.gather(target_session.release(), draft_session.release(None, len(prompt_ids)))
    await asyncio.gather(target.close(), draft.close())
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--gamma", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--log-dir", help="keep the services' logs here")
    args = parser.parse_args()
    model = str(resolve_model_path("default"))
    prompts = load_prompts(FAMILIES["default"].prompts)
    render_prompts(prompts, AutoTokenizer.from_pretrained(model))
    with tempfile.TemporaryDirectory(prefix="banditspec-breakdown-") as workdir:
        stack = LocalStack(
            model=model, drafters=["pld=prompt_lookup"], controller_port=0, model_free_in_controller=False,
            extra_target_args=["--dtype", "float32", "--device", "cpu"], extra_draft_args=["--device", "cpu"],
            log_dir=Path(args.log_dir or workdir),
        )  # fmt: skip
        with stack:
            target = next(s for s in stack.services if s.name == "target")
            draft = next(s for s in stack.services if s.name == "draft")
            assert target.unix_address and draft.unix_address
            transports = {"tcp": (target.address, draft.address), "unix": (target.unix_address, draft.unix_address)}
            ids = [list(p.ids) for p in prompts[: args.prompts]]
            runs: dict[str, list[dict[str, list[float]]]] = {name: [] for name in transports}
            for repeat in range(args.repeats):
                for name, (target_address, draft_address) in transports.items():
                    if repeat == 0:
                        asyncio.run(drive(target_address, draft_address, ids[:1], 8, args.gamma))  # warm
                    figures = asyncio.run(drive(target_address, draft_address, ids, args.max_new_tokens, args.gamma))
                    runs[name].append(figures)
                    print(f"repeat {repeat + 1} {name}: " + ", ".join(f"{k} {ms(v)}" for k, v in figures.items()))
    print("median overhead per round (wall − the service's compute), ms, medians over repeats:")
    for name, figures_list in runs.items():
        cells = []
        for key in figures_list[0]:
            medians = [statistics.median(f[key]) for f in figures_list]
            base = [statistics.median(f[key]) for f in runs["tcp"]]
            cells.append(
                f"{key} {1e3 * statistics.median(medians):.2f} ({statistics.median(medians) / statistics.median(base):.2f}×)"
            )
        print(f"  {name}: " + ", ".join(cells))
    rounds = runs["tcp"][0]
    print(f"rounds per run: {len(rounds['round'])} drafted, {len(rounds['verify alone'])} target-only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
