"""Just enough HTTP/1.1 for a load generator: the request body and response framing."""

from __future__ import annotations

__all__ = ["json_body", "parse_response"]


def json_body(size: int = 1024) -> bytes:
    """A JSON webhook payload of exactly ``size`` bytes (the issue measures 1 KiB POSTs)."""
    head = b'{"type":"invoice.paid","data":{"id":"inv_1","note":"'
    tail = b'"}}'
    if size < len(head) + len(tail):
        msg = f"body size {size} is below the {len(head) + len(tail)}-byte JSON skeleton"
        raise ValueError(msg)
    return head + b"x" * (size - len(head) - len(tail)) + tail


def parse_response(buf: bytes | bytearray) -> tuple[int, int, bool] | None:
    """Find the end of the first HTTP/1.1 response in ``buf``.

    Only what a benchmark needs: the status line, ``Content-Length``, chunked framing and
    ``Connection: close``. A response without a length ends at EOF: ``end`` is then -1.

    Returns:
        ``(status, end, close)`` once the whole response is in ``buf``, else ``None``.

    Raises:
        ValueError: the bytes are not an HTTP/1.x response.
    """
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    lines = bytes(buf[:head_end]).split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        msg = f"not an HTTP/1.x status line: {lines[0][:80]!r}"
        raise ValueError(msg)
    status = int(parts[1])
    close = parts[0] == b"HTTP/1.0"
    length = -1
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            close = value.strip().lower() == b"close"
    body_start = head_end + 4
    if status < 200 or status in (204, 304):
        return status, body_start, close
    if chunked:
        end = _chunked_end(buf, body_start)
        return None if end is None else (status, end, close)
    if length >= 0:
        end = body_start + length
        return (status, end, close) if len(buf) >= end else None
    return status, -1, True


def _chunked_end(buf: bytes | bytearray, pos: int) -> int | None:
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buf[pos:line_end]).split(b";", 1)[0], 16)
        if size == 0:
            trailer_end = buf.find(b"\r\n\r\n", line_end)
            if trailer_end == line_end:
                return line_end + 4
            return None if trailer_end < 0 else trailer_end + 4
        pos = line_end + 2 + size + 2
        if len(buf) < pos:
            return None
