"""Old name of ``baton.sample_tools``, kept because workflow files name it
(``python: "baton.toolbox:calculator"``)."""

from baton.sample_tools import MARKET_FACTS, calculator, lookup_facts, word_count

__all__ = ["MARKET_FACTS", "calculator", "lookup_facts", "word_count"]
