"""Shared fixtures: tiny random Llama models with a tiny word-level tokenizer, and one local stack.

Nothing is downloaded: the models are built from a config with random weights and saved with
save_pretrained next to a tokenizer made with the `tokenizers` library, so the services load them
exactly as they would load a real checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# Three service processes and this one share the machine's cores; with torch's default threads the
# OpenMP workers spin-wait against each other and a tiny model's round takes ~5x longer. One thread
# each (inherited by the stack's processes) keeps the suite fast on small CI machines.
os.environ.setdefault("OMP_NUM_THREADS", "1")

RPC_TIMEOUT = 60.0
TIERS = ("unit", "integration", "real_model")


@pytest.fixture(autouse=True)
def _unit_tier_starts_no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The unit tier (tests/unit) tests plain objects in this process: a test that starts a service or any
    other process belongs in tests/integration."""
    if Path(request.node.path).parent.name != "unit":
        return

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a unit test started a process; move it to tests/integration")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test sits in a tier directory; the real-model tier also carries its marker."""
    for item in items:
        tier = Path(item.path).parent.name
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in tests/{{{','.join(TIERS)}}}/")
        if tier == "real_model":
            item.add_marker(pytest.mark.real_model)


EOS_ID = 0
WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "dog",
    "ran",
    "to",
    "big",
    "red",
    "sun",
    "is",
    "hot",
    "and",
    "cold",
    "sky",
    "blue",
    "sea",
    "fish",
    "swim",
    "up",
    "down",
    "left",
    "right",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "yes",
    "no",
    "we",
    "you",
    "they",
    "it",
    "go",
    "stop",
    "end",
    "start",
    "fast",
    "slow",
    "hello",
    "world",
    "foo",
    "bar",
    "baz",
    "qux",
    "zip",
    "zap",
]
# A second vocabulary of the same size whose ids mean different text: a different fingerprint.
ALIEN_WORDS = [f"x{i}" for i in range(len(WORDS))]


@dataclass(frozen=True)
class TinyModels:
    target: Path  # the target checkpoint
    near: Path  # the target with noise on its weights: agrees with it about half the time
    other: Path  # same tokenizer, independent random weights: rarely agrees
    alien: Path  # a different tokenizer (different vocabulary fingerprint)
    vocab_size: int


def build_tokenizer(words: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": EOS_ID, "<unk>": 1, "<pad>": 2}
    for word in words:
        vocab[word] = len(vocab)
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        clean_up_tokenization_spaces=False,
    )


def build_model(directory: Path, words: list[str], seed: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(words)
    config = LlamaConfig(
        vocab_size=len(tokenizer.get_vocab()),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        # Larger than the usual 0.02 so logits are spread out: argmax ties (and flaky greedy
        # comparisons from float noise) become practically impossible.
        initializer_range=0.2,
        bos_token_id=None,
        eos_token_id=EOS_ID,
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = EOS_ID
    model.generation_config.pad_token_id = 2
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def build_perturbed(directory: Path, source: Path, noise: float, seed: int) -> Path:
    """A copy of `source` with Gaussian noise of `noise` × each weight matrix's std added."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * noise * parameter.std())
    model.save_pretrained(str(directory))
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="session")
def tiny_models() -> Iterator[TinyModels]:
    # Outside pytest's basetemp: another pytest session's basetemp rotation must not delete
    # checkpoints that running services still read.
    with tempfile.TemporaryDirectory(prefix="banditspec-tiny-models-") as tmp:
        root = Path(tmp)
        target = build_model(root / "target", WORDS, seed=0)
        yield TinyModels(
            target=target,
            near=build_perturbed(root / "near", target, noise=0.1, seed=3),
            other=build_model(root / "other", WORDS, seed=1),
            alien=build_model(root / "alien", ALIEN_WORDS, seed=2),
            vocab_size=len(WORDS) + 3,
        )


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_models.target))


@pytest.fixture(scope="session")
def target_model(tiny_models):
    """The target checkpoint loaded in this process, for reference outputs."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(str(tiny_models.target), dtype=torch.float32).eval()


# the stack -------------------------------------------------------------------------------------

# Tests name arms with two γ per drafter kind (the controller defaults to one).
TWO_GAMMAS = ["--model-free-gammas", "3,6", "--model-gammas", "2,4"]
CPU_ARGS = ["--device", "cpu", "--dtype", "float32"]


def model_root_args(tmp_path_factory, model) -> list[str]:
    """LoadDrafter reads only under the draft service's model roots: tests load the tiny models (beside
    the target checkpoint) and files they write under pytest's temporary directory."""
    roots = [tmp_path_factory.getbasetemp()]
    if Path(str(model)).is_absolute():
        roots.append(Path(str(model)).parent)
    return [f"--model-root={root}" for root in roots]


@contextmanager
def local_stack(
    tmp_path_factory,
    name: str,
    model,
    drafters: list[str],
    controller_args=(),
    service_args=(),
    startup_timeout=300,
    target_args=("--verify-padding", "off"),
    draft_args=(),
    client_tls=None,
    http_port=None,
):
    """target + draft service + controller as processes on loopback (CPU, float32), controller on a free
    port; prints the services' logs when they fail to start, and stops them all afterwards. Verify
    padding is off by default: it follows timings, and would make the arms' γ (and names) vary."""
    from banditspec.cli.launcher import LocalStack

    log_dir = tmp_path_factory.mktemp(f"{name}-logs")
    stack = LocalStack(
        model=str(model),
        drafters=list(drafters),
        controller_port=0,
        extra_target_args=[*CPU_ARGS, *service_args, *target_args],
        extra_draft_args=[*CPU_ARGS, *service_args, *model_root_args(tmp_path_factory, model), *draft_args],
        extra_controller_args=list(controller_args),
        log_dir=log_dir,
        startup_timeout=startup_timeout,
        client_tls=client_tls,
        http_port=http_port,
        model_free_in_controller=False,  # the draft service's arms (local/…); tests add --local-drafter themselves
    )
    try:
        stack.start()
    except Exception:
        for log in sorted(log_dir.glob("*.log")):
            print(f"--- {log.name} ---\n{log.read_text()[-4000:]}")
        raise
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def stack(tiny_models, tmp_path_factory):
    """Drafters: pld (prompt lookup), same (a copy of the target: always agrees), near (a noisy
    copy: agrees about half the time), other (an independent random model), alien (another
    vocabulary: refused by the controller). same and near draft ahead during verification."""
    drafters = [
        "pld=prompt_lookup:1-3:fixed",  # 1-grams, always γ: the toy prompts are short
        f"same=model:{tiny_models.target}^8",
        f"near=model:{tiny_models.near}^6",
        f"other=model:{tiny_models.other}",
        f"alien=model:{tiny_models.alien}",
    ]
    # Warm starts off: tests here check each request's own bandit (the paper's warm-up in arm order);
    # priors are tested on the policy and measured by the load test.
    controller_args = ["--policy", "ucbspec", "--warm-start", "off", *TWO_GAMMAS]
    with local_stack(tmp_path_factory, "stack", tiny_models.target, drafters, controller_args) as stack:
        yield stack


@pytest.fixture(scope="session")
def controller_channel(stack):
    with grpc.insecure_channel(stack.address("controller")) as channel:
        yield channel


@pytest.fixture(scope="session")
def generation_stub(controller_channel):
    from banditspec.v1 import generation_pb2_grpc

    return generation_pb2_grpc.GenerationServiceStub(controller_channel)


@pytest.fixture(scope="session")
def target_stub(stack):
    from banditspec.v1 import target_pb2_grpc

    with grpc.insecure_channel(stack.address("target")) as channel:
        yield target_pb2_grpc.TargetServiceStub(channel)


@pytest.fixture(scope="session")
def draft_stub(stack):
    from banditspec.v1 import draft_pb2_grpc

    with grpc.insecure_channel(stack.address("draft")) as channel:
        yield draft_pb2_grpc.DraftServiceStub(channel)


class Aborted(Exception):
    """A servicer called in process aborted the call: args are (status code, details)."""


class ServicerContext:
    """Stands in for a gRPC servicer context when a test calls a servicer in process."""

    def set_trailing_metadata(self, metadata) -> None:
        pass

    async def abort(self, code, details):
        raise Aborted(code, details)


def list_arm_names(generation_stub) -> list[str]:
    from banditspec.v1 import generation_pb2

    return [a.name for a in generation_stub.ListArms(generation_pb2.ListArmsRequest(), timeout=RPC_TIMEOUT).arms]


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.2):
    """Poll until predicate() is truthy (returns its value) or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        time.sleep(interval)


def reference_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """The target alone, through transformers generate()."""
    import torch

    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=max_new_tokens)
    return out[0, len(prompt_ids) :].tolist()
