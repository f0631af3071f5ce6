"""Development stand-ins for the third-party services Montage talks to (not the real services).

Each is an aiohttp application (``create_app``) and, except Supabase Storage, a process:
``python -m montage_dev.fakes.ragnarok | trinity | openai --port N``.
"""
