"""A client of a running service's jobs API (POST/GET/DELETE /v1/jobs and its events), for the
CLI's `--server URL`: the standard library's HTTP only, so it costs nothing to import.

Every failure is an OpeaMediaError written for a person: the service's own `detail` for its
error answers (the type of its status, errors.error_for_status), ServiceUnreachable when it
cannot be reached.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

from . import __version__
from .config import FINAL_JOB_STATES, JOBS_PATH
from .errors import OpeaMediaError, ServiceUnreachable, Unauthorized, error_for_status

# The service sends a comment every 15 s on a quiet event stream: silence this long is a lost one.
STREAM_TIMEOUT = 60.0
RECONNECTS = 3  # a broken event stream is opened again (the current state comes first) this often
RECONNECT_DELAY = 1.0

Job = dict[str, Any]  # the JSON of server/jobs_wire.py's JobView


def service_url(text: str) -> str:
    """`localhost:9379` as curl reads it (http://); no trailing slash."""
    text = text.strip()
    url = text if "://" in text else f"http://{text}"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{text!r} is not an http(s) URL like http://localhost:9379")
    return url.rstrip("/")


class JobsClient:
    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = service_url(base_url)
        self.api_key = api_key
        self.timeout = timeout
        self._origin = _origin(self.base_url)

    def service(self) -> str | None:
        """The task the service runs, from /health (open without a key, and answering while the
        model loads); None if it does not say."""
        with self._open("GET", "/health", accept=(503,)) as response:
            body = self._json(response)
        return body.get("service") if isinstance(body, dict) else None

    # --- the jobs API -----------------------------------------------------------------------------

    def submit(self, body: dict[str, Any], *, formats: Sequence[str], idempotency_key: str) -> Job:
        """POST /v1/jobs; the same key makes a repeated submit return the same job, never a second."""
        query = urllib.parse.urlencode({"formats": ",".join(formats)})
        headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key}
        data = json.dumps(body).encode("utf-8")
        with self._open("POST", f"{JOBS_PATH}?{query}", data=data, headers=headers) as response:
            return self._json(response)

    def get(self, job_id: str) -> Job:
        with self._open("GET", f"{JOBS_PATH}/{job_id}") as response:
            return self._json(response)

    def cancel(self, job_id: str, *, timeout: float = 10.0) -> Job:
        with self._open("DELETE", f"{JOBS_PATH}/{job_id}", timeout=timeout) as response:
            return self._json(response)

    def follow(self, job_id: str) -> Iterator[Job]:
        """The job as its events tell it, the current state first, until (and with) its final state.

        A stream that breaks off is opened again a few times; the first event of each is the
        job's state then, so nothing that matters is missed.
        """
        attempts = 0
        while True:
            try:
                for job in self._events(job_id):
                    attempts = 0
                    yield job
                    if job["state"] in FINAL_JOB_STATES:
                        return
            except ServiceUnreachable:
                if attempts >= RECONNECTS:
                    raise
            attempts += 1
            time.sleep(RECONNECT_DELAY)

    def download(self, url: str) -> bytes:
        """A result file. Its URL is the service's (absolute, or under --public-url); the key goes
        only to the service's own origin."""
        url = urllib.parse.urljoin(self.base_url + "/", url)
        with self._open("GET", url, key=_origin(url) == self._origin) as response:
            try:
                return response.read()
            except (OSError, http.client.HTTPException) as exc:
                raise self._unreachable(exc) from None

    # --- HTTP -----------------------------------------------------------------------------------------

    def _events(self, job_id: str) -> Iterator[Job]:
        """GET /v1/jobs/{id}/events: each event's job (server-sent events, `data:` lines joined)."""
        path = f"{JOBS_PATH}/{job_id}/events"
        with self._open(
            "GET", path, headers={"Accept": "text/event-stream"}, timeout=STREAM_TIMEOUT
        ) as response:
            data: list[str] = []
            while True:
                try:
                    raw = response.readline()
                except (OSError, http.client.HTTPException) as exc:
                    raise self._unreachable(exc) from None
                if not raw:  # the stream ended (the service ends it after the final state)
                    return
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
                elif not line and data:
                    yield json.loads("\n".join(data))
                    data = []
                # `event:` repeats the state the data holds; `id:` and `: keep-alive` add nothing.

    def _open(
        self,
        method: str,
        path_or_url: str,
        *,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        key: bool = True,
        accept: tuple[int, ...] = (),
    ) -> http.client.HTTPResponse:
        """The answer to one request; an error answer (unless its status is in `accept`) raised as
        the error it stands for."""
        url = path_or_url if "://" in path_or_url else self.base_url + path_or_url
        request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        request.add_header("User-Agent", f"opea-media/{__version__}")
        if key and self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            return urllib.request.urlopen(request, timeout=timeout or self.timeout)  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:
            if exc.code in accept:
                return exc  # type: ignore[return-value]  # it reads like a response
            with exc:
                raise self._refused(exc) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None

    def _refused(self, exc: urllib.error.HTTPError) -> OpeaMediaError:
        """The service's error answer as the error it stands for, its `detail` as the words."""
        try:
            detail = str(json.loads(exc.read())["detail"])
        except (OSError, ValueError, KeyError, TypeError, http.client.HTTPException):
            detail = f"{exc.code} {exc.reason}"
        if exc.code == 401:
            given = "the API key given was refused" if self.api_key else "it needs an API key"
            return Unauthorized(
                f"{self.base_url}: {given}; pass the service's key with --api-key or OPEA_MEDIA_API_KEY"
            )
        retry_after = exc.headers.get("Retry-After", "")
        if exc.code == 503 and retry_after.isdigit():
            detail = f"{self.base_url} is busy: {detail} (it suggests {retry_after} s)"
        elif exc.code == 404 or exc.code >= 500:
            detail = f"{self.base_url}: {detail}"
        return error_for_status(
            exc.code, detail, retry_after=int(retry_after) if retry_after.isdigit() else None
        )

    def _json(self, response: http.client.HTTPResponse) -> Job:
        try:
            return json.loads(response.read())  # type: ignore[no-any-return]
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        except ValueError:
            raise ServiceUnreachable(
                f"{self.base_url} answered something that is not JSON: is it an opea-media service?"
            ) from None

    def _unreachable(self, exc: BaseException) -> ServiceUnreachable:
        reason: object = getattr(exc, "reason", None) or exc
        if isinstance(reason, (TimeoutError, socket.timeout)):
            reason = "no answer in time"
        elif isinstance(reason, ConnectionRefusedError):
            reason = "connection refused; is `opea-media serve` running there?"
        elif isinstance(reason, socket.gaierror):
            reason = "unknown host"
        return ServiceUnreachable(
            f"cannot reach the service at {self.base_url}: {reason or type(exc).__name__}"
        )


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.netloc.lower()
