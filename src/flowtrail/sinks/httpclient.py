"""HTTP plumbing shared by the webhook and Alertmanager sinks: one requests session, one POST.

Status handling: 2xx delivered; 400/413/422 refused content (`SinkRejected`, not retried);
everything else -- connection errors, timeouts, 408/429/5xx and also 401/403/404, which are
configuration problems someone can fix while the spool waits -- is a retryable `SinkError`
(with the server's Retry-After when it sends one). The Delivery owns retries, so the session does none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from flowtrail import __version__
from flowtrail.sinks.alerting import SinkError, SinkRejected

REJECTED_STATUS = frozenset({400, 413, 422})
_BODY_EXCERPT = 300


def session_from(config: dict[str, Any]) -> requests.Session:
    """A session with the entry's headers, TLS and basic-auth options (ValueError/OSError when unusable)."""
    s = requests.Session()
    s.headers["User-Agent"] = f"flowtrail/{__version__}"
    s.headers.update(config.get("headers") or {})
    tls = config.get("tls") or {}
    if tls.get("insecure_skip_verify"):
        s.verify = False
    elif tls.get("ca_file"):
        if not Path(tls["ca_file"]).is_file():
            raise ValueError(f"tls.ca_file {tls['ca_file']}: no such file")
        s.verify = tls["ca_file"]
    if tls.get("cert_file"):
        s.cert = (tls["cert_file"], tls["key_file"]) if tls.get("key_file") else tls["cert_file"]
    elif tls.get("key_file"):
        raise ValueError("tls.key_file needs tls.cert_file")
    auth = config.get("basic_auth")
    if auth:
        if "password_file" in auth:
            password = Path(auth["password_file"]).read_text().strip()
        else:
            password = auth.get("password", "")
        s.auth = (auth["username"], password)
    return s


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # the HTTP-date form: our own backoff is good enough


def post_json(session: requests.Session, url: str, body: bytes, timeout_s: float) -> requests.Response:
    """POST a JSON body; SinkError/SinkRejected as described in the module docstring."""
    try:
        r = session.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=timeout_s)
    except requests.RequestException as exc:
        raise SinkError(f"POST {url}: {type(exc).__name__}: {exc}") from None
    if 200 <= r.status_code < 300:
        return r
    excerpt = r.text[:_BODY_EXCERPT].strip()
    msg = f"POST {url}: HTTP {r.status_code}" + (f": {excerpt}" if excerpt else "")
    if r.status_code in REJECTED_STATUS:
        raise SinkRejected(msg)
    raise SinkError(msg, retry_after_s=_retry_after(r.headers.get("Retry-After")))
