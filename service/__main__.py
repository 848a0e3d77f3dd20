"""`python -m service` is the `paxos-events` command."""

from service.cli import main

main()
