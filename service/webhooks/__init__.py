"""Webhook intake: the controller, sender authentication, and group commit."""
