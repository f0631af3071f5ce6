"""The security suite attacks the stack of ``tests/stack.py`` (the services as ``make up`` runs them)."""
