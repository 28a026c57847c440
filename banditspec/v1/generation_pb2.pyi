from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Policy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POLICY_UNSPECIFIED: _ClassVar[Policy]
    POLICY_UCBSPEC: _ClassVar[Policy]
    POLICY_EXP3SPEC: _ClassVar[Policy]
    POLICY_FIXED: _ClassVar[Policy]
    POLICY_UNIFORM: _ClassVar[Policy]
    POLICY_UCBSPEC_COUNTERFACTUAL: _ClassVar[Policy]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_EOS: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_CONTEXT: _ClassVar[FinishReason]
POLICY_UNSPECIFIED: Policy
POLICY_UCBSPEC: Policy
POLICY_EXP3SPEC: Policy
POLICY_FIXED: Policy
POLICY_UNIFORM: Policy
POLICY_UCBSPEC_COUNTERFACTUAL: Policy
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_EOS: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_CONTEXT: FinishReason

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class ChatPrompt(_message.Message):
    __slots__ = ("messages", "add_generation_prompt")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    ADD_GENERATION_PROMPT_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    add_generation_prompt: bool
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., add_generation_prompt: _Optional[bool] = ...) -> None: ...

class TokenIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("text", "token_ids", "chat", "max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop", "policy", "allowed_arms", "request_id")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_ARMS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: TokenIds
    chat: ChatPrompt
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    policy: Policy
    allowed_arms: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Union[TokenIds, _Mapping]] = ..., chat: _Optional[_Union[ChatPrompt, _Mapping]] = ..., max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., policy: _Optional[_Union[Policy, str]] = ..., allowed_arms: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ArmStats(_message.Message):
    __slots__ = ("arm", "pulls", "drafted_tokens", "accepted_tokens", "mean_reward", "wall_seconds", "counterfactual_observations")
    ARM_FIELD_NUMBER: _ClassVar[int]
    PULLS_FIELD_NUMBER: _ClassVar[int]
    DRAFTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MEAN_REWARD_FIELD_NUMBER: _ClassVar[int]
    WALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COUNTERFACTUAL_OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    arm: str
    pulls: int
    drafted_tokens: int
    accepted_tokens: int
    mean_reward: float
    wall_seconds: float
    counterfactual_observations: int
    def __init__(self, arm: _Optional[str] = ..., pulls: _Optional[int] = ..., drafted_tokens: _Optional[int] = ..., accepted_tokens: _Optional[int] = ..., mean_reward: _Optional[float] = ..., wall_seconds: _Optional[float] = ..., counterfactual_observations: _Optional[int] = ...) -> None: ...

class GenerationStats(_message.Message):
    __slots__ = ("rounds", "generated_tokens", "wall_seconds", "tokens_per_second", "arms", "policy", "prompt_tokens", "prefill_seconds", "controller_overhead_seconds", "controller_overhead_median_seconds", "seed")
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    WALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_OVERHEAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_OVERHEAD_MEDIAN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    rounds: int
    generated_tokens: int
    wall_seconds: float
    tokens_per_second: float
    arms: _containers.RepeatedCompositeFieldContainer[ArmStats]
    policy: str
    prompt_tokens: int
    prefill_seconds: float
    controller_overhead_seconds: float
    controller_overhead_median_seconds: float
    seed: int
    def __init__(self, rounds: _Optional[int] = ..., generated_tokens: _Optional[int] = ..., wall_seconds: _Optional[float] = ..., tokens_per_second: _Optional[float] = ..., arms: _Optional[_Iterable[_Union[ArmStats, _Mapping]]] = ..., policy: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., prefill_seconds: _Optional[float] = ..., controller_overhead_seconds: _Optional[float] = ..., controller_overhead_median_seconds: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("request_id", "text", "token_ids", "finish_reason", "stats")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    finish_reason: FinishReason
    stats: GenerationStats
    def __init__(self, request_id: _Optional[str] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., stats: _Optional[_Union[GenerationStats, _Mapping]] = ...) -> None: ...

class RoundUpdate(_message.Message):
    __slots__ = ("round", "arm", "drafted", "accepted", "token_ids", "text", "wall_seconds", "service_seconds")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    DRAFTED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    WALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SERVICE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    round: int
    arm: str
    drafted: int
    accepted: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    wall_seconds: float
    service_seconds: float
    def __init__(self, round: _Optional[int] = ..., arm: _Optional[str] = ..., drafted: _Optional[int] = ..., accepted: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ..., wall_seconds: _Optional[float] = ..., service_seconds: _Optional[float] = ...) -> None: ...

class GenerateStreamResponse(_message.Message):
    __slots__ = ("round", "final")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    round: RoundUpdate
    final: GenerateResponse
    def __init__(self, round: _Optional[_Union[RoundUpdate, _Mapping]] = ..., final: _Optional[_Union[GenerateResponse, _Mapping]] = ...) -> None: ...

class ListArmsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ArmInfo(_message.Message):
    __slots__ = ("name", "draft_service", "drafter", "num_tokens")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DRAFT_SERVICE_FIELD_NUMBER: _ClassVar[int]
    DRAFTER_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    name: str
    draft_service: str
    drafter: str
    num_tokens: int
    def __init__(self, name: _Optional[str] = ..., draft_service: _Optional[str] = ..., drafter: _Optional[str] = ..., num_tokens: _Optional[int] = ...) -> None: ...

class ListArmsResponse(_message.Message):
    __slots__ = ("arms",)
    ARMS_FIELD_NUMBER: _ClassVar[int]
    arms: _containers.RepeatedCompositeFieldContainer[ArmInfo]
    def __init__(self, arms: _Optional[_Iterable[_Union[ArmInfo, _Mapping]]] = ...) -> None: ...
