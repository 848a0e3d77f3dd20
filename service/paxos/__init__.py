"""Paxos as we meet it: its REST API client, and a simulator of Paxos for tests and demos."""
