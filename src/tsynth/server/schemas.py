"""The wire format of ``tsynth serve``: OpenAI's request and response objects as pydantic models.

Only the shapes live here (in the spirit of vLLM's protocol module); what the server does with them
is in :mod:`tsynth.server.app` and :mod:`tsynth.server.worker`. Requests ignore fields tsynth has no
use for (``user``, ``store``, ``metadata`` of chat...) and reject the ones it cannot honour.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

Auto = Literal["auto"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


# ---------------------------------------------------------------------- errors and lists
class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ListPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    has_more: bool = False
    first_id: Optional[str] = None
    last_id: Optional[str] = None


# ---------------------------------------------------------------------- files
class FileObject(_Wire):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    status_details: Optional[str] = None
    expires_at: Optional[int] = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


# ---------------------------------------------------------------------- fine-tuning
class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_epochs: Union[Auto, int] = Field("auto", description="'auto' or 1..50")
    batch_size: Union[Auto, int] = Field("auto", description="'auto' or 1..256")
    learning_rate_multiplier: Union[Auto, float] = Field("auto", description="'auto' or > 0")

    @model_validator(mode="after")
    def _ranges(self) -> "Hyperparameters":
        for name, lo, hi in [("n_epochs", 1, 50), ("batch_size", 1, 256)]:
            v = getattr(self, name)
            if v != "auto" and not lo <= v <= hi:
                raise ValueError(f"{name} must be 'auto' or an integer in {lo}..{hi}, got {v}")
        if self.learning_rate_multiplier != "auto" and not self.learning_rate_multiplier > 0:
            raise ValueError(f"learning_rate_multiplier must be 'auto' or > 0, got {self.learning_rate_multiplier}")
        return self


class Supervised(BaseModel):
    hyperparameters: Hyperparameters = Hyperparameters()


class Method(BaseModel):
    type: Literal["supervised", "dpo", "reinforcement"] = "supervised"
    supervised: Optional[Supervised] = None
    dpo: Optional[dict[str, Any]] = None
    reinforcement: Optional[dict[str, Any]] = None


class JobCreate(_Wire):
    model: str
    training_file: str
    validation_file: Optional[str] = None
    hyperparameters: Optional[Hyperparameters] = None
    method: Optional[Method] = None
    suffix: Optional[str] = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    seed: Optional[int] = Field(None, ge=0, le=2147483647)
    metadata: Optional[dict[str, str]] = Field(None, max_length=16)
    integrations: Optional[list[dict[str, Any]]] = None


class JobError(BaseModel):
    code: Optional[str] = None
    message: Optional[str] = None
    param: Optional[str] = None


class FineTuningJob(_Wire):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    model: str
    fine_tuned_model: Optional[str] = None
    finished_at: Optional[int] = None
    status: Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
    training_file: str
    validation_file: Optional[str] = None
    result_files: list[str] = []
    trained_tokens: Optional[int] = None
    hyperparameters: dict[str, Any]
    method: dict[str, Any]
    seed: int
    estimated_finish: Optional[int] = None
    integrations: Optional[list[dict[str, Any]]] = None
    metadata: Optional[dict[str, str]] = None
    organization_id: str = "org-tsynth"
    error: JobError = JobError()
    user_provided_suffix: Optional[str] = None
    usage_metrics: Optional[dict[str, Any]] = None
    shared_with_openai: bool = False


class JobEvent(_Wire):
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"] = "message"
    data: Optional[dict[str, Any]] = None


class JobCheckpoint(_Wire):
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, Any]


# ---------------------------------------------------------------------- models
class ModelObject(_Wire):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    shutdown_date: Optional[str] = None


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]


# ---------------------------------------------------------------------- chat completions
class ChatMessage(_Wire):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Union[str, list[dict[str, Any]], None] = None
    name: Optional[str] = None


class JsonSchemaFormat(_Wire):
    name: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    description: Optional[str] = None
    schema_: Optional[dict[str, Any]] = Field(None, alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None


class StreamOptions(_Wire):
    include_usage: bool = False


class ChatRequest(_Wire):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    n: int = Field(1, ge=1, le=128)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, ge=0, le=1)
    seed: Optional[int] = None
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    stop: Union[str, list[str], None] = None
    response_format: Optional[ResponseFormat] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    logprobs: Optional[bool] = None
    tools: Optional[list[dict[str, Any]]] = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length"]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: Optional[str] = None
    annotations: list[dict[str, Any]] = []


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str
    service_tier: str = "default"


class ChunkChoice(BaseModel):
    index: int
    delta: dict[str, str]     # {"role", "content": ""} first, then {"content": piece}, then {} with the reason
    finish_reason: Optional[FinishReason] = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed completion (``usage`` only on the last, when asked for)."""
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str = "fp_tsynth"
    choices: list[ChunkChoice]
    usage: Optional[Usage] = None
