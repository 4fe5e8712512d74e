"""Command-line tools (run with ``python -m erclap.tools.<name>``)."""
