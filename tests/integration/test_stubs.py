"""The committed gRPC stubs match proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_committed_stubs_are_up_to_date():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "compile_proto.py"), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout


def test_stubs_carry_every_documented_rpc():
    from banditspec.v1 import draft_pb2, generation_pb2, target_pb2

    assert set(generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].methods_by_name) >= {
        "Generate",
        "GenerateStream",
        "ListArms",
    }
    assert set(target_pb2.DESCRIPTOR.services_by_name["TargetService"].methods_by_name) >= {
        "Info",
        "OpenSession",
        "Verify",
        "ReleaseSession",
    }
    assert set(draft_pb2.DESCRIPTOR.services_by_name["DraftService"].methods_by_name) >= {
        "Info",
        "ListDrafters",
        "Propose",
        "ReleaseSession",
        "LoadDrafter",
        "UnloadDrafter",
    }
