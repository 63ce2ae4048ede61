"""Credentials out of every URI that vaegen prints, logs or stores: the one place that decides.

URIs may carry secrets (`http://alice:PW@host`, `postgresql://user:PW@db/mlflow`,
`s3://KEY:SECRET@bucket`, `...?X-Amz-Signature=...`). Whatever vaegen shows or records (the
manifest's lineage, MLflow tags, log lines, error messages) passes through `redact_uri` or
`redact_text`; only the code that connects keeps the URI as given. Standard library only, so
that cheap commands and Ray workers import it for free.
"""

from __future__ import annotations

import re
import urllib.parse

MASK = "***"
# Query parameters whose values are credentials in the URIs we meet: pyarrow's S3 options
# (access_key, secret_key, session_token), presigned URLs (X-Amz-Signature, X-Amz-Credential,
# X-Amz-Security-Token, sig), tokens and passwords of every spelling.
_SECRET_PARAMETER = re.compile(r"key|secret|token|pass|pwd|sig|credential|auth", re.IGNORECASE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# A URI inside free text: scheme://, then anything up to whitespace or a quote/bracket.
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()\[\]{}]+")


def has_scheme(text: str) -> bool:
    """`s3://...`, `http://...`: a URI. A local path (even one holding `://` later on) is not."""
    return bool(_SCHEME.match(text))


def _secret_parameter(name: str) -> bool:
    return bool(_SECRET_PARAMETER.search(name))


def redact_uri(uri: str) -> str:
    """The URI with its user-info and credential-like query values replaced by `***`.

    Anything that is not a URI (a local path, a reference such as `vae-decoder@champion`) is
    returned unchanged, byte for byte.
    """
    if not has_scheme(uri):
        return uri
    scheme, rest = uri.split("://", 1)
    head_end = min((index for index in (rest.find("?"), rest.find("#")) if index >= 0), default=len(rest))
    head, tail = rest[:head_end], rest[head_end:]
    # User-info ends at the last "@" of the authority. An unencoded "/" in a secret (AWS secret keys
    # have them) would end the authority early, so a ":" anywhere before the last "@" counts too:
    # redacting a path that merely looks like that is the safe mistake.
    at = head.rfind("@")
    if at >= 0 and ("/" not in head[:at] or ":" in head[:at]):
        head = MASK + head[at:]
    if tail.startswith("?"):
        query, hash_mark, fragment = tail[1:].partition("#")
        tail = "?" + _redact_query(query) + hash_mark + fragment
    return f"{scheme}://{head}{tail}"


def _redact_query(query: str) -> str:
    pairs = []
    for pair in query.split("&"):
        name, equals, value = pair.partition("=")
        if equals and _secret_parameter(urllib.parse.unquote_plus(name)):
            value = MASK
        pairs.append(name + equals + value)
    return "&".join(pairs)


def redact_text(text: str) -> str:
    """Every URI inside a message redacted (error messages quote URIs that libraries built)."""
    return _URI_IN_TEXT.sub(lambda match: redact_uri(match.group(0)), text)


def has_credentials(uri: str) -> bool:
    """True if redaction would change the URI: it carries a user-info part or a secret query value."""
    return redact_uri(uri) != uri
