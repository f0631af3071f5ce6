"""Development stand-ins for the third-party services Montage talks to (not the real services).

Each is an aiohttp application (``create_app``) and, except Supabase Storage, a process:
``python -m montage_dev.fakes.ragnarok | trinity | openai --port N``. What they share besides
their services' APIs is in ``serving`` (bearer check, test routes, command line) and ``media``
(the MP4 clips they serve).
"""
