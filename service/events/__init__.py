"""The pure domain: what Paxos sends and what it means. No I/O."""
