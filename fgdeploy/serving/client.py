"""A small client of `fgdeploy serve`'s HTTP API (no HTTP library needed; one kept-alive connection per thread).

    client = EndpointClient("http://127.0.0.1:8000")
    record = client.predict(Path("bird.jpg").read_bytes(), topk=3)   # {"width", "height", "top", ...}
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
from typing import Any

from fgdeploy.errors import FgdeployError
from fgdeploy.serving.api import HEALTH_PATH, MODEL_PATH, PREDICT_PATH


class EndpointError(FgdeployError):
    """The server answered with an error (``status``: the HTTP status; the message is the server's)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class EndpointClient:
    """Requests to one server; safe to share between threads.

    Args:
        url: http://HOST:PORT of the server.
        timeout_s: per request (connect, send, wait for the answer); a request taking longer raises.
    """

    def __init__(self, url: str, timeout_s: float = 60.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise FgdeployError(f"{url!r}: give the server as http://HOST:PORT")
        self.url = f"http://{parts.netloc}"
        self.host, self.port = parts.hostname, parts.port or 80
        self.timeout_s = timeout_s
        self._local = threading.local()

    def predict(self, image: bytes, topk: int | None = None) -> dict[str, Any]:
        """The server's record for one encoded image.

        Raises:
            EndpointError: the server refused it (4xx: the image or request; 5xx: the server).
            OSError: the server cannot be reached or did not answer in time.
        """
        path = PREDICT_PATH + (f"?topk={int(topk)}" if topk is not None else "")
        return self._request("POST", path, image, {"Content-Type": "application/octet-stream"})

    def model(self) -> dict[str, Any]:
        """GET /v1/model: class and part names, input size, precision, source checkpoint."""
        return self._request("GET", MODEL_PATH)

    def health(self) -> dict[str, Any]:
        """GET /v1/health; raises EndpointError (503) while the model is loading."""
        return self._request("GET", HEALTH_PATH)

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> dict[str, Any]:
        for attempt in (0, 1):   # a kept-alive connection the server closed meanwhile: reconnect once
            connection = self._connection()
            try:
                connection.request(method, path, body=body, headers=headers or {})
                response = connection.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._close()
                if attempt:
                    raise
            except BaseException:
                self._close()
                raise
        payload = json_object(data)
        if response.status != 200:
            message = payload.get("error") or payload.get("status") or data[:200].decode("utf-8", "replace")
            raise EndpointError(response.status, f"HTTP {response.status} from {self.url}{path}: {message}")
        return payload

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            self._local.connection = connection
        return connection

    def _close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


def json_object(data: bytes) -> dict[str, Any]:
    """A response body as a JSON object; {} when it is not one (a proxy's plain-text error, say)."""
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
