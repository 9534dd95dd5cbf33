"""Consensus: several voters answer independently, then a judge or a vote decides.

Voters run in parallel on the same input and never see each other. With a judge, the
answers are shown as anonymous candidates in a shuffled order (against position and
name bias); the order is seeded from the run id and the step's key, so a resumed or
replayed run builds the same prompt. Without a judge, voters answer a structured vote
and a ``majority`` or ``weighted`` count decides (ties are SPLIT). Either way the
result has the judge's shape: consensus, confidence, key_agreements,
key_disagreements, recommendation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Literal

from baton.agent import Agent
from baton.context import RunContext
from baton.errors import StepFailed, UsageError
from baton.json_schema import validation_errors
from baton.observe import events as ev
from baton.patterns._base import Target, as_text, invoke, is_fatal, output_of, target_name
from baton.patterns._settings import ConsensusSettings
from baton.settings import check_settings, declared

RESULT_EVENT = ev.CONSENSUS_RESULT

JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "consensus": {"type": "string", "enum": ["APPROVE", "REJECT", "SPLIT"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "key_agreements": {"type": "array", "items": {"type": "string"}},
        "key_disagreements": {"type": "array", "items": {"type": "string"}},
        "recommendation": {"type": "string"},
    },
    "required": ["consensus", "confidence", "key_agreements", "key_disagreements", "recommendation"],
    "additionalProperties": False,
}

VOTE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "vote": {"type": "string", "enum": ["APPROVE", "REJECT"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "reasoning": {"type": "string"},
    },
    "required": ["vote", "confidence", "reasoning"],
    "additionalProperties": False,
}


@dataclass
class Consensus:
    """Several voters answer the same input; a judge agent picks the answer, or a vote does."""

    voters: list[Target]
    judge: Agent | None = None
    vote: Literal["majority", "weighted"] | None = None
    weights: dict[str, float] | None = None
    shuffle: bool = declared(ConsensusSettings, "shuffle")
    name: str = "consensus"
    _voters: list[Target] = field(init=False, repr=False)
    _judge: Agent | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        check_settings(self, "consensus")
        if len(self.voters) < 2:
            raise UsageError(f"consensus {self.name!r} needs at least two voters")
        names = [target_name(v) for v in self.voters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise UsageError(f"consensus {self.name!r}: voter names must be unique; repeated: {', '.join(dupes)}")
        if self.judge is not None and self.vote is not None:
            raise UsageError(f"consensus {self.name!r}: give either a judge or a vote method, not both")
        if self.judge is None and self.vote is None:
            self.vote = "majority"
        if self.vote not in (None, "majority", "weighted"):
            raise UsageError(f"consensus {self.name!r}: vote must be 'majority' or 'weighted', not {self.vote!r}")
        unknown = sorted(set(self.weights or {}) - set(names))
        if unknown:
            raise UsageError(f"consensus {self.name!r}: weights name unknown voters {unknown}; voters: {names}")
        negative = sorted(k for k, w in (self.weights or {}).items() if w < 0)
        if negative:
            raise UsageError(f"consensus {self.name!r}: weights must not be negative: {negative}")
        if self.judge is not None:
            self._judge = self.judge.with_(output=JUDGE_SCHEMA)
            self._voters = list(self.voters)
        else:
            self._voters = [v.with_(output=VOTE_SCHEMA) if isinstance(v, Agent) else v for v in self.voters]

    async def __call__(self, ctx: RunContext, input: Any) -> dict[str, Any]:
        names = [target_name(v) for v in self._voters]
        results = await ctx.gather(*(invoke(ctx, v, input) for v in self._voters), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException) and is_fatal(r):
                raise r
        failures = [f"{n}: {type(r).__name__}: {r}" for n, r in zip(names, results, strict=True)
                    if isinstance(r, BaseException)]
        if failures:
            raise StepFailed(f"consensus {self.name!r}: {len(failures)} of {len(names)} voters failed:\n- "
                             + "\n- ".join(failures), step=self.name, attempts=failures)
        answers = dict(zip(names, results, strict=True))
        if self._judge is not None:
            outcome = await self._ask_judge(ctx, input, answers)
        else:
            outcome = self._count(answers)
        ctx.emit(RESULT_EVENT, {"name": self.name, "consensus": outcome["consensus"],
                                "confidence": outcome["confidence"], "voters": names})
        return outcome

    def order(self, ctx: RunContext, n: int) -> list[int]:
        """The order candidates are shown in: shuffled, seeded by run id and step key."""
        seed = f"{ctx.run_id}:{ctx.next_key('shuffle')}"
        order = list(range(n))
        if self.shuffle:
            random.Random(seed).shuffle(order)
        return order

    async def _ask_judge(self, ctx: RunContext, input: Any, answers: dict[str, Any]) -> dict[str, Any]:
        assert self._judge is not None
        texts = list(answers.values())
        parts = [f"Question:\n{as_text(input)}",
                 f"{len(texts)} independent assessments follow, in random order. Judge them on their merits only."]
        for n, i in enumerate(self.order(ctx, len(texts))):
            parts.append(f"--- Candidate {chr(ord('A') + n) if n < 26 else n + 1} ---\n{as_text(texts[i])}")
        parts.append("Decide whether they reach consensus: APPROVE, REJECT or SPLIT when they genuinely disagree. "
                     "List the key agreements and disagreements; do not invent a consensus that is not there.")
        return dict(output_of(await ctx.call(self._judge, "\n\n".join(parts))))

    def _count(self, answers: dict[str, Any]) -> dict[str, Any]:
        votes: dict[str, dict[str, Any]] = {}
        for voter, answer in answers.items():
            data = answer.model_dump(mode="json") if hasattr(answer, "model_dump") else answer
            errors = validation_errors(data, VOTE_SCHEMA)
            if errors:
                raise StepFailed(f"consensus {self.name!r}: voter {voter!r} did not return a vote "
                                 f"(vote, confidence, reasoning): " + "; ".join(errors), step=self.name,
                                 attempts=[f"{voter}: {e}" for e in errors])
            votes[voter] = data
        weights = self.weights or {}

        def weight(voter: str) -> float:
            if self.vote == "weighted":
                return float(weights.get(voter, 1.0)) * float(votes[voter]["confidence"])
            return 1.0

        score = {side: sum(weight(v) for v, d in votes.items() if d["vote"] == side) for side in ("APPROVE", "REJECT")}
        total = score["APPROVE"] + score["REJECT"]
        if total <= 0 or abs(score["APPROVE"] - score["REJECT"]) <= 1e-9 * max(total, 1.0):
            verdict = "SPLIT"
        else:
            verdict = "APPROVE" if score["APPROVE"] > score["REJECT"] else "REJECT"
        reasons = {v: f"{v} ({d['vote']}, confidence {float(d['confidence']):.2f}): {d['reasoning']}"
                   for v, d in votes.items()}
        if verdict == "SPLIT":
            agreements: list[str] = []
            disagreements = list(reasons.values())
            confidence = 0.0 if total <= 0 else 0.5
        else:
            agreements = [reasons[v] for v, d in votes.items() if d["vote"] == verdict]
            disagreements = [reasons[v] for v, d in votes.items() if d["vote"] != verdict]
            confidence = score[verdict] / total
        approve = sum(1 for d in votes.values() if d["vote"] == "APPROVE")
        tally = f"{approve} of {len(votes)} voters approve"
        if self.vote == "weighted":
            tally += f" (weighted score {score['APPROVE']:.3g} approve vs {score['REJECT']:.3g} reject)"
        advice = {"APPROVE": "Approve.", "REJECT": "Reject.", "SPLIT": "No consensus: escalate to a human."}[verdict]
        return {"consensus": verdict, "confidence": round(confidence, 4), "key_agreements": agreements,
                "key_disagreements": disagreements, "recommendation": f"{advice} {tally}."}
