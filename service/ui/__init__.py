"""The operator console: server-rendered pages under /ui (see controller.py)."""
