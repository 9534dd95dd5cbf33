"""Per-model prices from an editable data file, and cost from usage.

Unknown models are priced as unknown (``None``), never as zero: a report that says
$0.00 for a model it cannot price would hide real spend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from baton.messages import Usage


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens."""

    model: str
    input: float
    output: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float
    batch_factor: float

    def cost(self, usage: Usage, *, batch: bool = False) -> float:
        write_1h = usage.cache_creation_1h_input_tokens
        write_5m = usage.cache_creation_input_tokens - write_1h
        usd = (
            usage.input_tokens * self.input
            + write_5m * self.cache_write_5m
            + write_1h * self.cache_write_1h
            + usage.cache_read_input_tokens * self.cache_read
            + usage.output_tokens * self.output
        ) / 1_000_000
        return usd * self.batch_factor if batch else usd


@cache
def _table(path: str | None) -> dict[str, Price]:
    import tomllib  # only when a price is first needed: keeps ``import baton`` fast

    if path:
        raw = tomllib.loads(Path(path).read_text())
    else:
        raw = tomllib.loads((Path(__file__).parent / "prices.toml").read_text())
    defaults = raw.get("defaults", {})
    table: dict[str, Price] = {}
    for name, entry in raw.get("models", {}).items():
        base = float(entry["input"])
        price = Price(
            model=name,
            input=base,
            output=float(entry["output"]),
            cache_write_5m=base * float(entry.get("cache_write_5m", defaults.get("cache_write_5m", 1.25))),
            cache_write_1h=base * float(entry.get("cache_write_1h", defaults.get("cache_write_1h", 2.0))),
            cache_read=base * float(entry.get("cache_read", defaults.get("cache_read", 0.1))),
            batch_factor=float(entry.get("batch", defaults.get("batch", 0.5))),
        )
        table[name] = price
        for alias in entry.get("aliases", []):
            table[alias] = price
    return table


def price_for(model: str) -> Price | None:
    """The price of ``model``, or None if the table does not know it.

    ``BATON_PRICES`` may point at a TOML file that replaces the shipped table.
    """
    return _table(os.environ.get("BATON_PRICES")).get(model)


def cost_of(model: str, usage: Usage, *, batch: bool = False) -> float | None:
    price = price_for(model)
    return None if price is None else price.cost(usage, batch=batch)


def known_models() -> list[str]:
    return sorted(_table(os.environ.get("BATON_PRICES")))
