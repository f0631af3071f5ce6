"""The end-to-end suite's fixtures live in ``tests/stack.py`` (a plugin shared with ``tests/security``)."""
