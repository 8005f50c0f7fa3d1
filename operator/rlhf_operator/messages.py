"""Messages the operator copies into status and events: bounded, and without credential values.

KubeRay puts the tail of the driver's log into a failed RayJob's message (up to 20,000 characters),
and a log, a trainer's error or a rejected spec can hold a token (an Authorization header, a
`token=` query parameter, a URL with a password). Whatever reaches the RLHFJob's status is read by
everyone who may read the job, and its events by more: the value goes, the key stays.
"""

from __future__ import annotations

import re

MESSAGE_LIMIT = 1024
REASON_LIMIT = 64
REDACTED = "[redacted]"
# What a credential looks like in a log line or an error message. The value is replaced, the key
# kept, so the message still says what was there.
_SECRETS = (
    # Authorization: Bearer abc / Proxy-Authorization: Basic abc / "authorization": "token abc"
    re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)(?:(?:bearer|basic|token)\s+)?[^\s\"',;]+"),
    re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    # token=abc, api_key: abc, "password": "abc", HF_TOKEN=abc, X-Api-Key: abc
    re.compile(
        r"(?i)([\w.-]{0,64}(?:token|secret|password|passwd|api[_-]?key|apikey|access[_-]?key|credential)s?"
        r"[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&]+"
    ),
    # user:password@ in a URL
    re.compile(r"(://[^/@\s:]+:)[^/@\s]+(@)"),
)
# Well-known token shapes, wherever they appear: Hugging Face, OpenAI-style, GitHub, JWTs.
_TOKEN_SHAPES = re.compile(
    r"\b(?:hf_[A-Za-z0-9]{16,}|sk-[A-Za-z0-9_-]{16,}|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+)"
)


def clean_message(text: str | None, limit: int = MESSAGE_LIMIT) -> str:
    """`text` without credential values, at most `limit` characters (head and tail kept)."""
    if not text:
        return ""
    if len(text) > 4 * limit:
        # Scrub only what can be kept (regexes over a 20 KB log cost): the output below comes from
        # well inside these two windows, so a token the cut splits never reaches it.
        text = text[: 2 * limit] + "\n" + text[-2 * limit :]
    for pattern in _SECRETS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED + (m.group(2) if m.re.groups > 1 else ""), text)
    text = _TOKEN_SHAPES.sub(REDACTED, text)
    if len(text) <= limit:
        return text
    # A driver log's cause is at its end, the summary at its start: keep both.
    head = limit // 4
    marker = " ... "
    return text[:head] + marker + text[len(text) - (limit - head - len(marker)) :]
