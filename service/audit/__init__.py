"""The tamper-evident audit trail: seals over the journal, verification, exports, pruning."""
