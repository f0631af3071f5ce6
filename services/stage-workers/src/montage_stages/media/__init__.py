"""Local media and rendering: ffmpeg, MP4 boxes, clip encoding, still pictures and palettes, audio
analysis (spectra, beats, song structure), the timeline of clips, the soundtrack, and the
sample-song synthesiser (``python -m montage_stages.media.synth``). Imports only ``runtime``
(settings, context) beside itself: never a stage or a provider."""
