"""The exit codes of `python -m worker` by name, shared by the commands (cli.py) and the daemon (app.py)."""

EXIT_OK = 0
EXIT_ERROR = 1  # the command failed: a job failed or timed out, Redis unavailable, unhealthy...
EXIT_USAGE = 2  # bad settings, flags or input
EXIT_UNAVAILABLE = 3  # a resource is missing: the health port cannot be bound, no model to embed with
EXIT_MEMORY = 4  # stopped because the daemon's memory went past DAEMON_MEMORY_MB
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as a shell reports it
