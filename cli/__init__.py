"""The ``api-prompt`` command (installed as the ``api_prompt.cli`` package)."""
