"""Request and response bodies (OpenAI shapes plus the governance extension fields).

Unknown fields are refused (extra="forbid"), so a misspelled parameter is a 422 that
names it rather than a silently ignored setting.
"""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from promethios_jax.serve import checkpoint_io as io

Unit = Field(ge=0.0, le=1.0)


class Telemetry(BaseModel):
    """The eight governance tag fields of the training data (see data/RULES.md)."""
    model_config = ConfigDict(extra="forbid")
    trust: float = Unit
    emotion: Literal[io.CATEGORICAL_VALUES["emotion"]]
    intensity: float = Unit
    verify: float = Unit
    attest: float = Unit
    bound: float = Unit
    decision: Literal[io.CATEGORICAL_VALUES["decision"]]
    model: Literal[io.CATEGORICAL_VALUES["model"]]


assert tuple(Telemetry.model_fields) == io.TELEMETRY_KEYS, "Telemetry must list the schema's keys"

Domain = Literal[io.DOMAINS]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Generation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: Optional[str] = None
    max_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[int] = Field(default=None, ge=0)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = Field(default=1, ge=1, le=1)
    user: Optional[str] = None
    # Extensions: the governance inputs, and a benchmark switch as in vLLM.
    telemetry: Telemetry
    domain: Domain
    ignore_eos: bool = False

    def stop_list(self) -> tuple:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if any(s == "" for s in stops):
            raise ValueError("stop: empty stop sequences are not allowed")
        if len(stops) > 4:
            raise ValueError(f"stop: at most 4 sequences, got {len(stops)}")
        return tuple(stops)


class CompletionRequest(_Generation):
    prompt: str = Field(min_length=1)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str
    name: Optional[str] = None


class ChatRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)

    def request_text(self) -> str:
        """A single user message is the request as the model was trained on it; a longer
        conversation becomes `role: content` lines ending with the last message."""
        if self.messages[-1].role != "user":
            raise ValueError("messages: the last message must have role 'user'")
        if len(self.messages) == 1:
            return self.messages[0].content
        return "\n".join(f"{m.role}: {m.content}" for m in self.messages)


class Resolution(BaseModel):
    """A reviewer's answer to an escalated request."""
    model_config = ConfigDict(extra="forbid")
    answer: str = Field(min_length=1)
    decision: Literal[io.DECISIONS]
    reviewer: str = Field(min_length=1)
    category: Literal[tuple(io.CATEGORY_NAMES)] = "operational"
    tool: Optional[Literal[io.TOOLS]] = None
    notes: Optional[str] = None
