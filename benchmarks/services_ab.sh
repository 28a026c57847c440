#!/usr/bin/env bash
# N = 1 A/B of the whole stack (target + draft service + controller; greedy, float32, SmolLM2 default model,
# the default benchmark workload): "before" = d99940c's services (the last commit before the target batched
# sessions' rounds), "after" = this checkout's HEAD; alternating before/after/before/after..., then after ÷ before
# from the pooled tok/s (all tokens ÷ all seconds of each variant's runs).
#
# Both variants run the SAME client and launcher: `banditspec loadtest` of the after tree (pinned worktree),
# N = 1, the same prompts (the workload's first REQUESTS, kinds interleaved), the same max new tokens,
# policy ucbspec-cf, drafters pld/pldf/sfx, model-free γ 6 (--model-free-gammas 6, as `--pld-gammas 6` in
# RESULTS 11), the same target torch threads (--threads, default: every core, what each version's own
# launcher gives its target on this machine). Only the services' code differs (see services_ab.py for how).
#
# usage: benchmarks/services_ab.sh [ALTERNATIONS=2] [MAX_NEW_TOKENS=64] [REQUESTS=4]
# env:   THREADS (target torch threads, both variants; default nproc; RESULTS 11 used 1)
#        VERIFY_PADDING=off|auto  off (default): γ stays 6 in both, so both run the same arms (pld/6, pldf/6,
#                      sfx/6); auto: each target pads verifies to the length it measured cheapest at start-up and
#                      the controller fills γ up to it (γ 6 became 7 or 9 between runs in the smoke tests)
#        AFTER_LAYOUT=own|old  own (default): HEAD's launcher as it is (model-free drafters in the controller,
#                      Unix sockets, draft service and controller niced 10); old: the after stack laid out as
#                      the before one has to be (drafters in the draft service, TCP, no nice)
#        AFTER_EXTRA / BEFORE_EXTRA  more loadtest args for one variant (e.g. AFTER_EXTRA=--controller-arg=--warm-start=off)
#        CHECK=1       also check every output against greedy generate() (costs the references' time per run)
#        PROVE=1       PYTHONVERBOSE=1 in the services: their logs name every file they imported
#        BEFORE_REV (d99940c), AFTER_REV (this checkout's HEAD), BEFORE_TREE, AFTER_TREE (worktrees under
#                      $TMPDIR; AFTER_TREE=<this checkout> runs its working tree as it is, uncommitted edits included),
#        OUT ($TMPDIR/banditspec-ab/runs)
set -euo pipefail

ALTERNATIONS=${1:-2}
MAX_NEW=${2:-64}
REQUESTS=${3:-4}
THREADS=${THREADS:-$(nproc)}
AFTER_LAYOUT=${AFTER_LAYOUT:-own}
VERIFY_PADDING=${VERIFY_PADDING:-off}
HERE=$(cd "$(dirname "$0")" && pwd)
MAIN=$(git -C "$HERE" rev-parse --show-toplevel)
SCRATCH=${TMPDIR:-/tmp}/banditspec-ab
PY=$MAIN/.venv/bin/python
BEFORE_REV=${BEFORE_REV:-d99940c}
AFTER_REV=${AFTER_REV:-$(git -C "$MAIN" rev-parse HEAD)}
BEFORE_TREE=${BEFORE_TREE:-$SCRATCH/before}
AFTER_TREE=${AFTER_TREE:-$SCRATCH/after}
OUT=${OUT:-$SCRATCH/runs}
export HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1

# A detached worktree per variant (they share this checkout's objects; nothing in its tree changes).
tree_at() {  # tree rev
    local tree=$1 rev=$2
    if [ "$(cd "$tree" 2>/dev/null && pwd -P)" = "$(cd "$MAIN" && pwd -P)" ]; then
        echo "note: $tree used as it is (its working tree, uncommitted changes included); nothing checked out" >&2
        return
    fi
    if [ ! -e "$tree/.git" ]; then
        git -C "$MAIN" worktree add --detach "$tree" "$rev" >/dev/null 2>&1
    fi
    if [ "$(git -C "$tree" rev-parse HEAD)" != "$(git -C "$MAIN" rev-parse "$rev^{commit}")" ]; then
        git -C "$tree" checkout -q --detach "$rev"
    fi
    if [ -n "$(git -C "$tree" status --porcelain --untracked-files=no)" ]; then
        echo "error: $tree has local changes" >&2; exit 1
    fi
}
tree_at "$BEFORE_TREE" "$BEFORE_REV"
tree_at "$AFTER_TREE" "$AFTER_REV"
BEFORE_SHA=$(git -C "$BEFORE_TREE" rev-parse --short HEAD)
AFTER_SHA=$(git -C "$AFTER_TREE" rev-parse --short HEAD)
[ -z "$(git -C "$AFTER_TREE" status --porcelain --untracked-files=no)" ] || AFTER_SHA=$AFTER_SHA+dirty

STAMP=$(date +%Y%m%d-%H%M%S)
RUN_DIR=$OUT/$STAMP
mkdir -p "$RUN_DIR"
SUMMARY=$RUN_DIR/summary.tsv
printf 'run\tvariant\tservices_commit\ttok_s\ttokens\tseconds\trequests\terrors\tmismatches\tarms\tpulls\tstarted\n' > "$SUMMARY"
echo "A/B N=1: before=$BEFORE_SHA ($BEFORE_TREE) after=$AFTER_SHA ($AFTER_TREE, layout $AFTER_LAYOUT)," \
     "client+launcher: $AFTER_SHA; $ALTERNATIONS alternation(s), $REQUESTS requests x $MAX_NEW new tokens," \
     "target --threads $THREADS --verify-padding $VERIFY_PADDING; output: $RUN_DIR"

COMMON=(--clients 1 --requests-per-client "$REQUESTS" --max-new-tokens "$MAX_NEW" --dtype float32 --device cpu
        --policy ucbspec-cf --model-free-gammas 6 --fixed-at '' --baselines ''
        "--target-arg=--threads=$THREADS" "--target-arg=--verify-padding=$VERIFY_PADDING")
[ "${CHECK:-0}" = 1 ] || COMMON+=(--no-check)
PROVE_ARG=()
[ "${PROVE:-0}" = 1 ] && PROVE_ARG=(--prove)

run_one() {  # index variant
    local index=$1 variant=$2 tree layout extra sha dir rc=0
    if [ "$variant" = before ]; then
        tree=$BEFORE_TREE; layout=old; extra=${BEFORE_EXTRA:-}; sha=$BEFORE_SHA
    else
        tree=$AFTER_TREE; layout=$AFTER_LAYOUT; extra=${AFTER_EXTRA:-}; sha=$AFTER_SHA
    fi
    dir=$RUN_DIR/$index-$variant
    mkdir -p "$dir"
    local started; started=$(date +%H:%M:%S)
    echo "[$started] run $index: $variant (services $sha)"
    # shellcheck disable=SC2086  # $extra: words on purpose
    PYTHONPATH=$AFTER_TREE "$PY" "$HERE/services_ab.py" --services-tree "$tree" --layout "$layout" "${PROVE_ARG[@]}" \
        -- "${COMMON[@]}" $extra --out "$dir" > "$dir/stdout.log" 2>&1 || rc=$?
    grep -E '^N=1 ' "$dir/stdout.log" || true
    if [ ! -f "$dir/loadtest.json" ]; then
        echo "run $index ($variant) failed (rc $rc): see $dir/stdout.log" >&2
        tail -20 "$dir/stdout.log" >&2
        exit 1
    fi
    "$PY" - "$dir/loadtest.json" "$index" "$variant" "$sha" "$started" >> "$SUMMARY" <<'EOF'
import json, sys
path, index, variant, sha, started = sys.argv[1:]
doc = json.load(open(path))
policy = doc["config"]["policy"]
for p in doc["phases"]:
    if p["method"] == policy and p["clients"] == 1:
        pulls = ",".join(f"{a}:{s:.2f}" for a, s in p["arm_shares"].items())
        print(f"{index}\t{variant}\t{sha}\t{p['tokens_per_second']:.2f}\t{p['tokens']}\t{p['seconds']:.3f}\t"
              f"{p['requests']}\t{p['errors']}\t{p['mismatches']}\t{','.join(doc['config']['arms'])}\t{pulls}\t{started}")
EOF
    [ "$rc" = 0 ] || echo "note: run $index ($variant) exited $rc (errors or mismatches; see its loadtest.md)" >&2
}

index=0
for ((a = 1; a <= ALTERNATIONS; a++)); do
    for variant in before after; do
        index=$((index + 1))
        run_one "$index" "$variant"
    done
done

echo
column -t -s $'\t' "$SUMMARY"
echo
"$PY" - "$SUMMARY" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
pooled = {}
for variant in ("before", "after"):
    mine = [r for r in rows if r["variant"] == variant]
    tokens = sum(int(r["tokens"]) for r in mine)
    seconds = sum(float(r["seconds"]) for r in mine)
    pooled[variant] = tokens / seconds if seconds else 0.0
    each = ", ".join(r["tok_s"] for r in mine)
    print(f"{variant:<7} pooled {pooled[variant]:6.2f} tok/s ({tokens} tokens / {seconds:.1f} s; runs: {each})")
errors = sum(int(r["errors"]) for r in rows)
if pooled["before"]:
    print(f"after ÷ before = {pooled['after'] / pooled['before']:.3f}" + (f"   ({errors} failed requests!)" if errors else ""))
EOF
echo "summary: $SUMMARY"
