"""Montage's contracts: what the services, the workers and the clients agree on.

``pipeline`` (the stages as data, job statuses), ``errors`` (the error-code catalogue and the HTTP
error body), ``models`` (stage inputs and outputs), ``messages`` (stream messages and their
idempotency ids), ``keys`` (every Redis name), ``api`` (the public HTTP bodies). They import only
the standard library, msgspec and each other, so any service or client can use them without
Redis, Postgres or aiohttp.
"""
