"""ERCLAP configurations as code: each module has a ``get_config()`` (``default`` declares every key).

The files under the repository's top-level ``configs/`` are the user-facing entry points
(``--config=configs/demo.py``); each re-exports a module of this package."""
