from banditspec.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DrafterKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DRAFTER_KIND_UNSPECIFIED: _ClassVar[DrafterKind]
    DRAFTER_KIND_PROMPT_LOOKUP: _ClassVar[DrafterKind]
    DRAFTER_KIND_MODEL: _ClassVar[DrafterKind]
    DRAFTER_KIND_SUFFIX: _ClassVar[DrafterKind]
    DRAFTER_KIND_RETRIEVAL: _ClassVar[DrafterKind]
DRAFTER_KIND_UNSPECIFIED: DrafterKind
DRAFTER_KIND_PROMPT_LOOKUP: DrafterKind
DRAFTER_KIND_MODEL: DrafterKind
DRAFTER_KIND_SUFFIX: DrafterKind
DRAFTER_KIND_RETRIEVAL: DrafterKind

class DrafterInfo(_message.Message):
    __slots__ = ("name", "kind", "vocab_fingerprint", "source", "device", "lookahead_hits", "model_free", "learns_from_outputs", "proposes_trees")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VOCAB_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    LOOKAHEAD_HITS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FREE_FIELD_NUMBER: _ClassVar[int]
    LEARNS_FROM_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    PROPOSES_TREES_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: DrafterKind
    vocab_fingerprint: str
    source: str
    device: str
    lookahead_hits: int
    model_free: bool
    learns_from_outputs: bool
    proposes_trees: bool
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[DrafterKind, str]] = ..., vocab_fingerprint: _Optional[str] = ..., source: _Optional[str] = ..., device: _Optional[str] = ..., lookahead_hits: _Optional[int] = ..., model_free: _Optional[bool] = ..., learns_from_outputs: _Optional[bool] = ..., proposes_trees: _Optional[bool] = ...) -> None: ...

class DraftInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DraftInfoResponse(_message.Message):
    __slots__ = ("drafters", "sessions")
    DRAFTERS_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    drafters: _containers.RepeatedCompositeFieldContainer[DrafterInfo]
    sessions: int
    def __init__(self, drafters: _Optional[_Iterable[_Union[DrafterInfo, _Mapping]]] = ..., sessions: _Optional[int] = ...) -> None: ...

class ListDraftersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDraftersResponse(_message.Message):
    __slots__ = ("drafters",)
    DRAFTERS_FIELD_NUMBER: _ClassVar[int]
    drafters: _containers.RepeatedCompositeFieldContainer[DrafterInfo]
    def __init__(self, drafters: _Optional[_Iterable[_Union[DrafterInfo, _Mapping]]] = ...) -> None: ...

class ProposeRequest(_message.Message):
    __slots__ = ("session_id", "drafter", "num_tokens", "context_length", "new_context_ids", "sampling", "seed", "score_drafters", "score_num_tokens", "tree_tokens", "score_tree_tokens")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    DRAFTER_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    NEW_CONTEXT_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SCORE_DRAFTERS_FIELD_NUMBER: _ClassVar[int]
    SCORE_NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TREE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SCORE_TREE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    drafter: str
    num_tokens: int
    context_length: int
    new_context_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: _common_pb2.SamplingParams
    seed: int
    score_drafters: _containers.RepeatedScalarFieldContainer[str]
    score_num_tokens: int
    tree_tokens: int
    score_tree_tokens: int
    def __init__(self, session_id: _Optional[str] = ..., drafter: _Optional[str] = ..., num_tokens: _Optional[int] = ..., context_length: _Optional[int] = ..., new_context_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., seed: _Optional[int] = ..., score_drafters: _Optional[_Iterable[str]] = ..., score_num_tokens: _Optional[int] = ..., tree_tokens: _Optional[int] = ..., score_tree_tokens: _Optional[int] = ...) -> None: ...

class AlternativeDraft(_message.Message):
    __slots__ = ("drafter", "draft_ids", "draft_parents")
    DRAFTER_FIELD_NUMBER: _ClassVar[int]
    DRAFT_IDS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_PARENTS_FIELD_NUMBER: _ClassVar[int]
    drafter: str
    draft_ids: _containers.RepeatedScalarFieldContainer[int]
    draft_parents: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, drafter: _Optional[str] = ..., draft_ids: _Optional[_Iterable[int]] = ..., draft_parents: _Optional[_Iterable[int]] = ...) -> None: ...

class ProposeResponse(_message.Message):
    __slots__ = ("draft_ids", "draft_probs", "context_length", "compute_seconds", "alternatives", "draft_parents")
    DRAFT_IDS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_PROBS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ALTERNATIVES_FIELD_NUMBER: _ClassVar[int]
    DRAFT_PARENTS_FIELD_NUMBER: _ClassVar[int]
    draft_ids: _containers.RepeatedScalarFieldContainer[int]
    draft_probs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenDistribution]
    context_length: int
    compute_seconds: float
    alternatives: _containers.RepeatedCompositeFieldContainer[AlternativeDraft]
    draft_parents: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, draft_ids: _Optional[_Iterable[int]] = ..., draft_probs: _Optional[_Iterable[_Union[_common_pb2.TokenDistribution, _Mapping]]] = ..., context_length: _Optional[int] = ..., compute_seconds: _Optional[float] = ..., alternatives: _Optional[_Iterable[_Union[AlternativeDraft, _Mapping]]] = ..., draft_parents: _Optional[_Iterable[int]] = ...) -> None: ...

class ReleaseDraftSessionRequest(_message.Message):
    __slots__ = ("session_id", "context_length", "new_context_ids", "prompt_length")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    NEW_CONTEXT_IDS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    context_length: int
    new_context_ids: _containers.RepeatedScalarFieldContainer[int]
    prompt_length: int
    def __init__(self, session_id: _Optional[str] = ..., context_length: _Optional[int] = ..., new_context_ids: _Optional[_Iterable[int]] = ..., prompt_length: _Optional[int] = ...) -> None: ...

class ReleaseDraftSessionResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class LoadDrafterRequest(_message.Message):
    __slots__ = ("name", "replace", "prompt_lookup", "model", "suffix", "retrieval")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LOOKUP_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SUFFIX_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    replace: bool
    prompt_lookup: PromptLookupOptions
    model: ModelDrafterOptions
    suffix: SuffixOptions
    retrieval: RetrievalOptions
    def __init__(self, name: _Optional[str] = ..., replace: _Optional[bool] = ..., prompt_lookup: _Optional[_Union[PromptLookupOptions, _Mapping]] = ..., model: _Optional[_Union[ModelDrafterOptions, _Mapping]] = ..., suffix: _Optional[_Union[SuffixOptions, _Mapping]] = ..., retrieval: _Optional[_Union[RetrievalOptions, _Mapping]] = ...) -> None: ...

class PromptLookupOptions(_message.Message):
    __slots__ = ("min_ngram", "max_ngram", "fixed_length")
    MIN_NGRAM_FIELD_NUMBER: _ClassVar[int]
    MAX_NGRAM_FIELD_NUMBER: _ClassVar[int]
    FIXED_LENGTH_FIELD_NUMBER: _ClassVar[int]
    min_ngram: int
    max_ngram: int
    fixed_length: bool
    def __init__(self, min_ngram: _Optional[int] = ..., max_ngram: _Optional[int] = ..., fixed_length: _Optional[bool] = ...) -> None: ...

class ModelDrafterOptions(_message.Message):
    __slots__ = ("model_path", "dtype", "min_confidence", "lookahead_tokens")
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    MIN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    LOOKAHEAD_TOKENS_FIELD_NUMBER: _ClassVar[int]
    model_path: str
    dtype: str
    min_confidence: float
    lookahead_tokens: int
    def __init__(self, model_path: _Optional[str] = ..., dtype: _Optional[str] = ..., min_confidence: _Optional[float] = ..., lookahead_tokens: _Optional[int] = ...) -> None: ...

class SuffixOptions(_message.Message):
    __slots__ = ("max_depth", "memory_tokens")
    MAX_DEPTH_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    max_depth: int
    memory_tokens: int
    def __init__(self, max_depth: _Optional[int] = ..., memory_tokens: _Optional[int] = ...) -> None: ...

class RetrievalOptions(_message.Message):
    __slots__ = ("datastore_path", "max_depth")
    DATASTORE_PATH_FIELD_NUMBER: _ClassVar[int]
    MAX_DEPTH_FIELD_NUMBER: _ClassVar[int]
    datastore_path: str
    max_depth: int
    def __init__(self, datastore_path: _Optional[str] = ..., max_depth: _Optional[int] = ...) -> None: ...

class LoadDrafterResponse(_message.Message):
    __slots__ = ("drafter", "load_seconds")
    DRAFTER_FIELD_NUMBER: _ClassVar[int]
    LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    drafter: DrafterInfo
    load_seconds: float
    def __init__(self, drafter: _Optional[_Union[DrafterInfo, _Mapping]] = ..., load_seconds: _Optional[float] = ...) -> None: ...

class UnloadDrafterRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UnloadDrafterResponse(_message.Message):
    __slots__ = ("unloaded",)
    UNLOADED_FIELD_NUMBER: _ClassVar[int]
    unloaded: bool
    def __init__(self, unloaded: _Optional[bool] = ...) -> None: ...
