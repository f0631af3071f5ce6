"""schemathesis hooks of the fuzz suites (``SCHEMATHESIS_HOOKS=tests.security.fuzz_hooks``): a real
song for each documented audio media type, and the SSE messages read as the document says.

The upload's ``audio_file`` part is documented with its media types (``encoding.contentType``:
``audio/mpeg, audio/wav, audio/flac``); schemathesis generates such a part from the strategy
registered for its media type, here real, short songs of each kind, made by ffmpeg before the run
(``FUZZ_AUDIO_DIR``). So a schema-valid upload is a real one, and the check that schema-valid
requests are accepted runs on the upload like on every other operation.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import strategies as st
from montage_contracts.api import PROMPT_MAX_SENT, PROMPT_PATTERN, WEBHOOK_URL_MAX, WEBHOOK_URL_PATTERN

MEDIA_TYPES = {"mp3": "audio/mpeg", "wav": "audio/wav", "flac": "audio/flac"}

# The prompt part is `text/plain` too (the document's encoding); its strategy draws prompts from
# the document's own pattern. (schemathesis 4.32's coverage phase fills a multipart body's parts
# that have no media-type strategy with "", whatever their schema, once one part has one.)
schemathesis.openapi.media_type(
    "text/plain",
    st.from_regex(PROMPT_PATTERN, fullmatch=True).filter(lambda s: 50 <= len(s) <= PROMPT_MAX_SENT).map(str.encode),
)

_dir = Path(os.environ["FUZZ_AUDIO_DIR"])
for _ext, _media in MEDIA_TYPES.items():
    _songs = sorted(p.read_bytes() for p in _dir.glob(f"*.{_ext}"))
    if not _songs:
        raise RuntimeError(f"no .{_ext} songs in {_dir}")
    schemathesis.openapi.media_type(_media, st.sampled_from(_songs))


@schemathesis.hook
def before_load_schema(context: schemathesis.HookContext, raw_schema: dict[str, Any]) -> None:
    """Read each SSE message's ``data`` as the document describes it: "what its ``data:`` line
    holds, as one line of JSON text". The document gives that JSON value's schema (what a client
    gets from ``JSON.parse``); schemathesis validates the wire, where the line is a string, so here
    it becomes a string whose JSON content has that schema (``contentMediaType`` and
    ``contentSchema``), which schemathesis decodes and checks event by event."""
    schemas = raw_schema["components"]["schemas"]
    adapted: set[str] = set()
    for union in ("SseEvent", "UserSseEvent"):  # a job's stream and the user's (HeartbeatEvent in both)
        stream = schemas[union]
        for member in stream.get("anyOf") or stream.get("oneOf") or []:
            name = member["$ref"].rsplit("/", 1)[-1]
            if name in adapted:
                continue
            adapted.add(name)
            properties = schemas[name]["properties"]
            properties["data"] = {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": properties["data"],
            }


# Whether a webhook URL is accepted depends on what its host resolves to (DNS: a name that does not
# resolve, or resolves to a private address, is 400), not on its shape, and the fuzzer's hosts
# resolve to nothing. So a schema-valid `webhook_url` (of an upload or of the user's default) is
# replaced by another schema-valid one that the development stack accepts: a loopback URL on the
# discard port, where no one listens (its deliveries fail and are retried; nothing is contacted).
# A schema-invalid one is left as drawn, so the rejection checks still see it. (The document gives
# the field no example: the examples phase applies no hook, and no example host would resolve.)
FUZZ_WEBHOOK_URL = "http://127.0.0.1:9/fuzz-webhook"
_WEBHOOK_URL = re.compile(WEBHOOK_URL_PATTERN)


@schemathesis.hook
def map_case(context: schemathesis.HookContext, case: Any) -> Any:
    body = case.body
    if isinstance(body, dict):
        url = body.get("webhook_url")
        if isinstance(url, str) and len(url) <= WEBHOOK_URL_MAX and _WEBHOOK_URL.search(url):
            body["webhook_url"] = FUZZ_WEBHOOK_URL
    return case
