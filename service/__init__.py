"""Paxos Event Store: durable intake of Paxos webhooks, the full events, and their history."""

__version__ = "0.1.0"
