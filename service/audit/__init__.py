"""The tamper-evident audit trail: the background sealer and report formatting (statements:
service.store.audit)."""
