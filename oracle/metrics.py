"""Prometheus metrics of one oracle, in its own registry (several oracles may share a process in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.readings_accepted = Counter(
            "energykart_oracle_readings_accepted", "Readings accepted by the API and stored", registry=r
        )
        self.readings_rejected = Counter(
            "energykart_oracle_readings_rejected", "Readings rejected by the API, by reason", ["reason"], registry=r
        )
        self.batches = Counter(
            "energykart_oracle_settle_batches", "Settle transactions, by outcome", ["outcome"], registry=r
        )
        self.gas_used = Counter("energykart_oracle_settle_gas_used", "Gas used by settle transactions", registry=r)
        self.readings_settled = Counter(
            "energykart_oracle_readings_settled", "Readings the contract accepted from our batches", registry=r
        )
        self.readings_skipped = Counter(
            "energykart_oracle_readings_skipped", "Readings the contract skipped, by its reason", ["reason"], registry=r
        )
        self.readings_deferred = Counter(
            "energykart_oracle_readings_deferred",
            "Readings left for the next round because the node would not estimate their settle",
            registry=r,
        )
        self.keeper_actions = Counter(
            "energykart_oracle_keeper_actions", "Keeper transactions, by action and outcome", ["action", "outcome"],
            registry=r,
        )  # fmt: skip
        self.rpc_errors = Counter("energykart_oracle_rpc_errors", "Failed rounds against the node", registry=r)
        self.settlement_lag = Gauge(
            "energykart_oracle_settlement_lag_seconds",
            "Age of the oldest reading still waiting to settle (0 when none waits)",
            registry=r,
        )
        self.queue_depth = Gauge("energykart_oracle_queue_depth", "Readings waiting to settle", registry=r)
        self.head_block = Gauge("energykart_oracle_head_block", "Latest block seen on the node", registry=r)
        self.db_bytes = Gauge(
            "energykart_oracle_db_bytes", "Size of the readings database on disk (file, WAL, index)", registry=r
        )
        self.readings_pruned = Counter(
            "energykart_oracle_readings_pruned", "Readings deleted by retention after they were done", registry=r
        )
        self.chain_up = Gauge("energykart_oracle_chain_up", "1 when the node answered the last poll", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
