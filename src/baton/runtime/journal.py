"""The run journal: completed steps by deterministic key, with group commits.

Steps that finish in the same moment are written in one store transaction: each
``commit`` joins the batch being gathered and returns once that batch is durable. A
step's result lives inside its record, so result and record commit atomically.

Writes are fenced by the owner's token: once another process has taken the run over
(``resume --force``, or an expired lease), every commit fails with ``RunOwnedElsewhere``
and nothing more of this process reaches the store.
"""

from __future__ import annotations

import asyncio

from baton.errors import RunOwnedElsewhere, StoreError
from baton.stores.base import StepRecord, Store


class Journal:
    def __init__(self, store: Store, run_id: str, owner_token: str | None = None) -> None:
        self.store = store
        self.run_id = run_id
        self.owner_token = owner_token
        self.steps: dict[str, StepRecord] = {}
        self._pending: list[StepRecord] = []
        self._batch_done: asyncio.Future[None] | None = None
        self._flusher: asyncio.Task[None] | None = None

    async def load(self) -> None:
        for rec in await self.store.load_steps(self.run_id):
            self.steps[rec.key] = rec

    def completed(self, key: str) -> StepRecord | None:
        rec = self.steps.get(key)
        return rec if rec is not None and rec.status == "completed" else None

    def get(self, key: str) -> StepRecord | None:
        return self.steps.get(key)

    async def commit(self, record: StepRecord) -> None:
        """Make ``record`` durable (batched with any other commits happening now)."""
        self.steps[record.key] = record
        self._pending.append(record)
        if self._batch_done is None:
            loop = asyncio.get_running_loop()
            self._batch_done = loop.create_future()
            if self._flusher is None or self._flusher.done():
                self._flusher = loop.create_task(self._flush_loop())
        done = self._batch_done
        await asyncio.shield(done)

    async def _flush_loop(self) -> None:
        # Let every step finishing in this loop iteration join the batch.
        await asyncio.sleep(0)
        while self._pending:
            batch, self._pending = self._pending, []
            done, self._batch_done = self._batch_done, None
            try:
                await self.store.put_steps(batch, owner_token=self.owner_token)
            except Exception as exc:  # the store is the source of truth: report, never swallow
                err = exc if isinstance(exc, (StoreError, RunOwnedElsewhere)) \
                    else StoreError(f"journal write failed: {exc}")
                if done is not None and not done.done():
                    done.set_exception(err)
                    done.exception()  # mark retrieved even if every waiter was cancelled
                continue
            if done is not None and not done.done():
                done.set_result(None)
            if self._pending and self._batch_done is None:
                self._batch_done = asyncio.get_running_loop().create_future()

    async def drain(self) -> None:
        """Wait until everything committed so far is durable."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)


def decision_key(key: str, crashes: int) -> str:
    """The journal key of the human decision to re-run the tool call at ``key`` after its
    ``crashes``-th crash while in flight (each crash needs its own decision)."""
    return f"{key}#decision" if crashes == 1 else f"{key}#decision-{crashes}"
