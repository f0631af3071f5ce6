"""Montage's development package (``tests/dev``): what runs Montage on one machine and what
stands in for the third-party services. Never shipped: the image does not install it, and no
library or service imports it (``tests/test_architecture.py``).

- :mod:`montage_dev.devstack`: the local stack (``make up``), also what the tests start.
- :mod:`montage_dev.fakes`: stand-ins for RAGNAROK, Trinity, Supabase Storage and the
  OpenAI-compatible providers, each runnable as ``python -m montage_dev.fakes.<name>``.
"""
