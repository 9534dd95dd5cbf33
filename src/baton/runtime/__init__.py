"""The durable engine: journal, budgets, the one model/tool call path, DAG scheduling, resilience."""
