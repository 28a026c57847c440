"""One run of `services_ab.sh`: the CLIENT tree's `banditspec loadtest` (client and launcher) with its
services started from the SERVICES tree, without editing either tree.

Run as  PYTHONPATH=CLIENT_TREE python services_ab.py --services-tree TREE --layout own|old -- LOADTEST_ARGS...

How the services get the other tree's code: the launcher spawns `sys.executable -m banditspec.cli ...`
with os.environ; `-m` puts the working directory first on sys.path, then PYTHONPATH, and the venv's
editable finder (to the checkout it was installed from) comes last (it is appended to sys.meta_path). So this process imports the
client tree (PYTHONPATH at its start, sys.path fixed from then on), and after it chdirs into the services
tree and sets PYTHONPATH to it, every service it spawns imports the services tree.

--layout old: the stack as d99940c's own launcher laid it out, which is all d99940c's services accept:
model-free drafters in the draft service (not --local-drafter in the controller), TCP loopback (no
--unix-socket), no --nice; and for a services tree whose serve-target lacks them, the loadtest's
--retained-prefixes 0 (d99940c keeps no released prefix anyway) and --metrics-port are not passed.
--layout own: the client tree's launcher unchanged (only valid when the services tree is the client tree).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def strip_flags(args: list[str], flags: set[str]) -> list[str]:
    """args without `--flag VALUE` / `--flag=VALUE` for each flag."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in flags:
            skip = True
            continue
        if arg.split("=", 1)[0] in flags:
            continue
        out.append(arg)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services-tree", required=True)
    parser.add_argument("--layout", choices=["own", "old"], required=True)
    parser.add_argument(
        "--prove", action="store_true", help="PYTHONVERBOSE=1 in the services (import paths in their logs)"
    )
    parser.add_argument("loadtest_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    loadtest_args = [a for a in args.loadtest_args if a != "--"]

    import banditspec
    import services.draft.specs  # noqa: F401  (imported now, while sys.path is the client tree's)
    from banditspec.bench import loadtest
    from banditspec.channels import open_channel
    from banditspec.v1 import target_pb2, target_pb2_grpc

    client_tree = Path(banditspec.__file__).resolve().parents[1]
    services_tree = Path(args.services_tree).resolve()
    if not (services_tree / "banditspec" / "cli" / "__main__.py").exists():
        sys.exit(f"no banditspec.cli in {services_tree}")
    if args.layout == "own" and services_tree != client_tree:
        sys.exit("--layout own needs the services tree to be the client tree")
    print(f"client (loadtest + launcher): {client_tree}; services: {services_tree}; layout {args.layout}", flush=True)

    # From here on every child process imports the services tree.
    os.environ["PYTHONPATH"] = str(services_tree)
    os.environ["HF_HUB_OFFLINE"] = "1"
    if args.prove:
        os.environ["PYTHONVERBOSE"] = "1"
    os.chdir(services_tree)

    Base = loadtest.LocalStack
    old_cli = subprocess.run(
        [sys.executable, "-m", "banditspec.cli", "serve-target", "--help"], capture_output=True, text=True
    ).stdout
    unknown = {f for f in ("--retained-prefixes", "--metrics-port") if f not in old_cli}

    class Stack(Base):  # type: ignore[misc, valid-type]
        def start(self):
            super().start()
            record = {}
            for s in self.services:
                pid = s.process.pid
                environ = dict(
                    kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv
                )
                cmdline = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
                record[s.name] = {
                    "pid": pid,
                    "cwd": os.readlink(f"/proc/{pid}/cwd"),
                    "PYTHONPATH": environ.get("PYTHONPATH"),
                    "argv": [a for a in cmdline if a][1:],
                }
            with open_channel(self.address("target")) as channel:
                info = target_pb2_grpc.TargetServiceStub(channel).Info(target_pb2.TargetInfoRequest(), timeout=30)
            # batch_forward_tokens: filled by a target that batches sessions' rounds (after d99940c) only.
            record["target"]["info_batch_forward_tokens"] = list(info.batch_forward_tokens)
            record["target"]["info_forward_ms"] = [round(1e3 * s, 1) for s in info.forward_seconds]
            record["target"]["info_verify_lengths"] = list(info.verify_lengths)
            assert self.log_dir is not None
            (self.log_dir.parent / "services.json").write_text(json.dumps(record, indent=1))
            print("services:", json.dumps(record), flush=True)
            return self

    def stack(**kwargs):
        if args.layout == "old":
            kwargs["extra_target_args"] = strip_flags(list(kwargs.get("extra_target_args", [])), unknown)
            kwargs.update(unix_sockets=False, model_free_in_controller=False, nice_beside_target=0)
        return Stack(**kwargs)

    loadtest.LocalStack = stack  # loadtest.main looks the name up in its module at call time
    return loadtest.main(loadtest_args)


if __name__ == "__main__":
    sys.exit(main())
