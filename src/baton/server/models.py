"""Request and response bodies (they make the OpenAPI document)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

RUN_ID = r"^[A-Za-z0-9_.:-]{1,100}$"
BIG = 10**15  # beyond any real budget, well inside what every store keeps


class LimitsIn(BaseModel):
    """Tighter limits for one run; each is capped by the workflow's own."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    budget_usd: float | None = Field(None, gt=0, le=BIG)
    budget_tokens: int | None = Field(None, gt=0, le=BIG)
    budget_input_tokens: int | None = Field(None, gt=0, le=BIG)
    budget_output_tokens: int | None = Field(None, gt=0, le=BIG)
    max_model_calls: int | None = Field(None, gt=0, le=BIG)
    timeout_s: float | None = Field(None, gt=0, le=BIG)
    max_depth: int | None = Field(None, gt=0, le=BIG)
    concurrency: int | None = Field(None, gt=0, le=BIG)


class RunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    workflow: str = Field(min_length=1, max_length=100, description="a registered workflow's name")
    input: Any = Field(None, description="checked against the workflow's input schema, if it has one")
    run_id: str | None = Field(None, pattern=RUN_ID)
    limits: LimitsIn | None = Field(None, description="tighter limits for this run (never looser)")


class Accepted(BaseModel):
    run_id: str
    status: str
    created: bool = True
    queue_position: int | None = None


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    approved: bool
    edit: Any = None
    note: str | None = Field(None, max_length=10_000)


class ErrorBody(BaseModel):
    type: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorBody


RETRIED: dict[int | str, dict[str, Any]] = {
    200: {"model": Accepted, "description": "a retry (same Idempotency-Key, run id or delivery): the existing run"}}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": why} for code, why in [
        (400, "malformed JSON"), (401, "missing or wrong API key, or bad signature"),
        (404, "no such workflow or run (for this tenant)"), (409, "the run or step is not in a state for this"),
        (413, "body too large"), (422, "invalid input"), (429, "a tenant limit is reached"),
        (503, "the service is stopping or its store is unreachable; retry")]
}
