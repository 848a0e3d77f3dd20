"""The audit trail's statements: seals over the journal, verification, exports, pruning."""
