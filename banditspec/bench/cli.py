"""`banditspec bench`: parse the flags into a BenchConfig, run every dtype, write the reports."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from banditspec.bench import __doc__ as BENCH_DOC
from banditspec.bench.config import FAMILIES, FULL, REDUCED, BenchConfig
from banditspec.policy_names import POLICY_WIRE_VALUES

# As bench.methods.ADAPTIVE, without importing torch before --help.
ADAPTIVE_POLICIES = [name for name in POLICY_WIRE_VALUES if name != "fixed"]


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    parser = argparse.ArgumentParser(
        prog="banditspec bench",
        description=BENCH_DOC.split("\n\n")[0],
        epilog="family presets: default = SmolLM2-135M-Instruct on benchmarks/prompts.json, drafters "
        "pld=prompt_lookup and sfx=suffix:24:off; pydocs = the shipped pydocs target on "
        "benchmarks/pydocs_passages.json, drafters dm=model:pydocs:draft-m, ds=model:pydocs:draft-s, pld, sfx, "
        "assisted baseline pydocs:draft-m.",
    )
    parser.add_argument("--family", choices=sorted(FAMILIES), default="default")
    parser.add_argument(
        "--reduced",
        action="store_true",
        help=f"smoke run: {REDUCED['limit']} prompt per kind, {REDUCED['max_new_tokens']} new tokens, "
        "float32 (explicit flags still win)",
    )
    parser.add_argument("--out", help="output directory (default results/bench-FAMILY)")
    parser.add_argument("--dtypes", help=f"comma-separated (default {','.join(FULL['dtypes'])})")
    parser.add_argument("--max-new-tokens", type=int, help=f"default {FULL['max_new_tokens']}")
    parser.add_argument("--limit", type=int, help="prompts per kind (default all)")
    parser.add_argument("--kinds", help="comma-separated subset of prompt kinds")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per prompt and method; the median counts")
    parser.add_argument(
        "--policies",
        help=f"comma-separated adaptive policies to measure (default all: {','.join(ADAPTIVE_POLICIES)}); "
        "hf-plain, hf-pld and every fixed arm (the oracle) are always measured",
    )
    parser.add_argument("--drafter", action="append", default=[], help="another drafter spec for the draft service")
    parser.add_argument("--datastore", help="add rest=retrieval:PATH when this datastore file exists")
    parser.add_argument("--assistant", help="draft model of the assisted generate() baseline (default: the family's)")
    parser.add_argument("--prompts", help="workload file instead of the family's")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (the baselines and the services)")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads of the baselines and of each service (default: torch's; --reduced: 1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="request seed of prompt 0; prompt i gets SEED + i")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per Generate RPC")
    parser.add_argument("--log-dir", help="service logs under DIR/DTYPE/ (default OUT/logs)")
    parser.add_argument(
        "--controller-arg", action="append", default=[],
        help="passed to serve-controller, e.g. --controller-arg=--tree-tokens=12 (tree arms)",
    )  # fmt: skip
    parser.add_argument(
        "--target-arg", action="append", default=[],
        help="passed to serve-target, e.g. --target-arg=--solo-threads=1 (a lone request on the shared threads)",
    )  # fmt: skip
    args = parser.parse_args(argv)

    family = FAMILIES[args.family]
    preset = REDUCED if args.reduced else FULL
    drafters = [*family.drafters, *args.drafter]
    if args.datastore:
        if Path(args.datastore).exists():
            drafters.append(f"rest=retrieval:{args.datastore}")
        else:
            print(f"warning: no datastore at {args.datastore}; running without the rest drafter", file=sys.stderr)
    out = Path(args.out or f"results/bench-{args.family}")
    config = BenchConfig(
        family=args.family,
        model=family.model,
        prompts=Path(args.prompts) if args.prompts else family.prompts,
        drafters=drafters,
        assistant=args.assistant or family.assistant,
        dtypes=_list(args.dtypes) or preset["dtypes"],
        max_new_tokens=args.max_new_tokens or preset["max_new_tokens"],
        limit=args.limit or preset["limit"],
        kinds=_list(args.kinds),
        repeats=args.repeats,
        policies=_list(args.policies) or list(ADAPTIVE_POLICIES),
        reduced=args.reduced,
        out=out,
        device=args.device,
        threads=args.threads or preset["threads"],
        seed=args.seed,
        timeout=args.timeout,
        log_dir=Path(args.log_dir) if args.log_dir else out / "logs",
        controller_args=args.controller_arg,
        target_args=args.target_arg,
    )
    if config.repeats < 1 or config.max_new_tokens < 1:
        parser.error("--repeats and --max-new-tokens must be >= 1")
    if unknown := sorted(set(config.policies) - set(ADAPTIVE_POLICIES)):
        parser.error(f"unknown --policies {', '.join(unknown)}; choose from {', '.join(ADAPTIVE_POLICIES)}")
    import torch

    if config.device == "auto":
        config.device = "cuda" if torch.cuda.is_available() else "cpu"
    return config


def _list(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 1 on a float32 stack mismatch or an inconsistent stream, else 0."""
    config = parse_args(argv)
    # Heavy imports after parsing, so that --help is instant.
    from banditspec.bench.analysis import analyse, failures
    from banditspec.bench.machine import machine
    from banditspec.bench.plots import write_plots
    from banditspec.bench.report import build_document, write_reports
    from banditspec.bench.run import run_dtype
    from banditspec.bench.workload import load_prompts, render_prompts
    from banditspec.model_paths import resolve_model_path
    from banditspec.models import load_tokenizer

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
        os.environ["OMP_NUM_THREADS"] = str(config.threads)  # inherited by the services

    start = time.perf_counter()
    measured_machine = machine(config.device)  # the commit that runs, not the one checked out at the end
    try:
        prompts = load_prompts(config.prompts, config.kinds, config.limit)
        render_prompts(prompts, load_tokenizer(resolve_model_path(config.model)))
    except (OSError, ValueError) as error:
        log(f"error: {error}")
        return 2
    log(
        f"{config.family}: {len(prompts)} prompts, {config.max_new_tokens} new tokens, "
        f"dtypes {', '.join(config.dtypes)}, {config.repeats} repeat(s), device {config.device}, "
        f"{config.threads or 'default'} thread(s); "
        f"service logs in {config.log_dir}"
    )
    results, plots = [], {}
    for dtype in config.dtypes:
        result = analyse(run_dtype(config, dtype, prompts, log))
        plots[dtype] = write_plots(result, config.out)
        results.append(result)
    bad = failures(results)
    document = build_document(config, measured_machine, prompts, results, bool(bad), plots)
    document["elapsed_seconds"] = time.perf_counter() - start
    json_path, md_path = write_reports(document, config.out)
    print(md_path.read_text())
    log(
        f"wrote {json_path}, {md_path} and {sum(len(p) for p in plots.values())} plots "
        f"in {document['elapsed_seconds']:.0f} s"
    )
    if bad:
        log(f"FAILED: {len(bad)} float32 stack mismatch(es) or stream inconsistencies")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
