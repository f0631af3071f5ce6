"""The provider seams: text (``text_provider``, with the LLM scene planner and prompt writer),
images (``image_provider``), transcription (``lyrics``), clip renderers (``renderers``: local or
RAGNAROK), and pricing (``costing``). Stages call them; they never import a stage."""
