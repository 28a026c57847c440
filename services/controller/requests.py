"""GenerateRequest (protobuf) → validated GenerationRequest, and results → protobuf."""

from __future__ import annotations

import math
import secrets
import uuid

from banditspec.errors import InvalidArgument
from banditspec.policy_names import POLICY_NAMES
from banditspec.sampling import SamplingParams
from banditspec.v1 import generation_pb2
from services.controller.arms import Arm, choose_arms
from services.controller.domain import GenerationRequest, GenerationResult

# Limits on a request, each named in its INVALID_ARGUMENT (docs/operating.md, "Request limits").
MAX_REQUEST_ID_CHARS = 128
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_ALLOWED_ARMS = 256
DEFAULT_MAX_NEW_TOKENS = 256  # max_new_tokens unset (0): this many, or what the context leaves if less
# A prompt text longer than this many characters per context token cannot fit: rejected before it is
# tokenised (tokenising runs off the event loop, but a megabyte still costs a core for a while).
MAX_TEXT_CHARS_PER_TOKEN = 32

FINISH_REASONS = {
    "length": generation_pb2.FINISH_REASON_LENGTH,
    "eos": generation_pb2.FINISH_REASON_EOS,
    "stop": generation_pb2.FINISH_REASON_STOP,
    "context": generation_pb2.FINISH_REASON_CONTEXT,
}


def prompt_ids(pb: generation_pb2.GenerateRequest, tokenizer, vocab_size: int) -> list[int]:
    which = pb.WhichOneof("prompt")
    if which == "text":
        if not pb.text.strip():
            raise InvalidArgument("prompt text is empty")
        return tokenizer.encode(pb.text)
    if which == "token_ids":
        ids = list(pb.token_ids.ids)
        if not ids:
            raise InvalidArgument("prompt token_ids is empty")
        if any(not 0 <= token < vocab_size for token in ids):
            raise InvalidArgument(f"prompt token ids must lie in [0, {vocab_size})")
        return ids
    if which == "chat":
        messages = [{"role": m.role, "content": m.content} for m in pb.chat.messages]
        if not messages or not any(m["content"].strip() for m in messages):
            raise InvalidArgument("chat prompt has no message with content")
        if any(not m["role"] for m in messages):
            raise InvalidArgument("every chat message needs a role")
        if not getattr(tokenizer, "chat_template", None):
            raise InvalidArgument("the target's tokenizer has no chat template; send text or token_ids")
        add_prompt = pb.chat.add_generation_prompt if pb.chat.HasField("add_generation_prompt") else True
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=add_prompt, tokenize=True)
        return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
    raise InvalidArgument("the request has no prompt: set text, token_ids or chat")


def check_fields(pb: generation_pb2.GenerateRequest, max_context: int) -> None:
    """The cheap checks, before the prompt is tokenised: sampling, sizes and limits."""
    temperature = pb.temperature if pb.HasField("temperature") else 0.0
    top_p = pb.top_p if pb.HasField("top_p") else 1.0
    if not (math.isfinite(temperature) and temperature >= 0):
        raise InvalidArgument(f"temperature must be a finite number >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise InvalidArgument(f"top_p must be in (0, 1], got {top_p}")
    if pb.top_k < 0:
        raise InvalidArgument(f"top_k must be >= 0, got {pb.top_k}")
    if pb.max_new_tokens < 0:
        raise InvalidArgument(
            f"max_new_tokens must be > 0 (or unset: {DEFAULT_MAX_NEW_TOKENS}), got {pb.max_new_tokens}"
        )
    if len(pb.request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidArgument(f"request_id has {len(pb.request_id)} characters; the limit is {MAX_REQUEST_ID_CHARS}")
    if len(pb.stop) > MAX_STOP_STRINGS:
        raise InvalidArgument(f"{len(pb.stop)} stop strings; the limit is {MAX_STOP_STRINGS}")
    for stop in pb.stop:
        if not stop:
            raise InvalidArgument("a stop string is empty")
        if len(stop) > MAX_STOP_CHARS:
            raise InvalidArgument(f"a stop string has {len(stop)} characters; the limit is {MAX_STOP_CHARS}")
    if len(pb.allowed_arms) > MAX_ALLOWED_ARMS:
        raise InvalidArgument(f"{len(pb.allowed_arms)} allowed_arms; the limit is {MAX_ALLOWED_ARMS}")
    max_chars = MAX_TEXT_CHARS_PER_TOKEN * max_context
    which = pb.WhichOneof("prompt")
    chars = len(pb.text) if which == "text" else sum(len(m.content) + len(m.role) for m in pb.chat.messages)
    if which in ("text", "chat") and chars > max_chars:
        raise InvalidArgument(
            f"prompt of {chars} characters; the limit is {max_chars} ({MAX_TEXT_CHARS_PER_TOKEN} per token of the "
            f"target's context of {max_context})"
        )
    if which == "token_ids" and len(pb.token_ids.ids) >= max_context:
        raise InvalidArgument(
            f"prompt of {len(pb.token_ids.ids)} tokens does not fit the target's context of {max_context} tokens"
        )


def from_pb(
    pb: generation_pb2.GenerateRequest,
    *,
    tokenizer,
    vocab_size: int,
    max_context: int,
    available_arms: list[Arm],
    default_policy: str,
    ids: list[int] | None = None,
) -> GenerationRequest:
    """Validate and convert; `ids`: the prompt already tokenised (off the event loop), else tokenised here."""
    check_fields(pb, max_context)
    temperature = pb.temperature if pb.HasField("temperature") else 0.0
    top_p = pb.top_p if pb.HasField("top_p") else 1.0
    if ids is None:
        ids = prompt_ids(pb, tokenizer, vocab_size)
    if len(ids) >= max_context:
        raise InvalidArgument(f"prompt of {len(ids)} tokens does not fit the target's context of {max_context} tokens")
    max_new_tokens = pb.max_new_tokens or min(DEFAULT_MAX_NEW_TOKENS, max_context - len(ids))
    if len(ids) + max_new_tokens > max_context:
        raise InvalidArgument(
            f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the target's context of "
            f"{max_context} tokens"
        )
    if pb.policy not in (generation_pb2.POLICY_UNSPECIFIED, *POLICY_NAMES):
        raise InvalidArgument(f"unknown policy {pb.policy}")
    policy = POLICY_NAMES.get(pb.policy, default_policy)
    try:
        arms = choose_arms(available_arms, list(pb.allowed_arms))
    except ValueError as error:
        raise InvalidArgument(str(error)) from error
    if not arms:
        raise InvalidArgument("no arm is available")
    if policy == "fixed":
        arms = arms[:1]
    return GenerationRequest(
        prompt_ids=ids,
        max_new_tokens=max_new_tokens,
        sampling=SamplingParams(temperature=temperature, top_p=top_p, top_k=pb.top_k),
        seed=pb.seed if pb.HasField("seed") else secrets.randbits(63),
        stop=list(pb.stop),
        policy=policy,
        arms=arms,
        request_id=pb.request_id or uuid.uuid4().hex[:16],
    )


def result_to_pb(
    request: GenerationRequest, result: GenerationResult, overhead_median: float
) -> generation_pb2.GenerateResponse:
    generated = len(result.token_ids)
    arms = [
        generation_pb2.ArmStats(
            arm=name,
            pulls=t.pulls,
            drafted_tokens=t.drafted,
            accepted_tokens=t.accepted,
            mean_reward=t.reward_sum / t.pulls if t.pulls else 0.0,
            wall_seconds=t.wall_seconds,
            counterfactual_observations=t.counterfactual,
        )
        for name, t in result.tallies.items()
    ]
    stats = generation_pb2.GenerationStats(
        rounds=result.rounds,
        generated_tokens=generated,
        wall_seconds=result.wall_seconds,
        tokens_per_second=generated / result.wall_seconds if result.wall_seconds else 0.0,
        arms=arms,
        policy=request.policy,
        prompt_tokens=len(request.prompt_ids),
        prefill_seconds=result.prefill_seconds,
        controller_overhead_seconds=sum(result.overheads),
        controller_overhead_median_seconds=overhead_median,
        seed=request.seed,
    )
    return generation_pb2.GenerateResponse(
        request_id=request.request_id,
        text=result.text,
        token_ids=result.token_ids,
        finish_reason=FINISH_REASONS[result.finish_reason],
        stats=stats,
    )
