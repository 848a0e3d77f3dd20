"""Process tests: real subprocesses and sockets (servers, workers, crashes, outages, a browser)."""
