"""What every stage runs with: its context (``context``), the settings (``settings``), the stage
metrics (``metrics``) and the process's provider clients with their failure translation
(``provider_http``: the worker makes one pool per process and every context carries it). The
ground floor of ``montage_stages``: it imports no other room (the context names video_generator's
fan-out link only for the type checker)."""
