"""Request and response bodies (they make the OpenAPI document)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

RUN_ID = r"^[A-Za-z0-9_.:-]{1,100}$"


class RunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    workflow: str = Field(min_length=1, max_length=100, description="a registered workflow's name")
    input: Any = Field(None, description="checked against the workflow's input schema, if it has one")
    run_id: str | None = Field(None, pattern=RUN_ID)
    limits: dict[str, Any] | None = Field(None, description="tighter limits for this run (never looser)")


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


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": why} for code, why in [
        (400, "malformed JSON"), (401, "missing or wrong API key, or bad signature"),
        (404, "no such workflow or run (for this tenant)"), (409, "the run or step is not in a state for this"),
        (413, "body too large"), (422, "invalid input"), (429, "a tenant limit is reached")]
}
