"""Parse HTTP byte-range answers: Content-Range values and multipart/byteranges bodies."""
import re

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def parse_content_range(value):
    """'bytes 0-99/1000' -> (0, 99, 1000)."""
    m = _CONTENT_RANGE.match(value or "")
    assert m, f"malformed Content-Range {value!r}"
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), int(m.group(2)), total


def parse_byteranges(content_type, body: bytes):
    """Split a multipart/byteranges body into [(headers, data)], checking its framing.

    Headers are a dict with lower-case names. The closing delimiter must be present, so a
    truncated body does not parse as a shorter valid one.
    """
    m = re.match(r'^multipart/byteranges;\s*boundary=("?)([^";]+)\1\s*$', content_type or "")
    assert m, f"not multipart/byteranges with a boundary: {content_type!r}"
    delimiter = b"\r\n--" + m.group(2).encode()
    text = b"\r\n" + body  # the first delimiter may start the body
    pieces = text.split(delimiter)
    parts, closed = [], False
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            closed = True
            break
        # After the delimiter: optional whitespace, CRLF, header lines, empty line, data.
        head, sep, data = piece.lstrip(b" \t").partition(b"\r\n\r\n")
        assert sep, "multipart part without header/body separator"
        headers = {}
        for line in head.split(b"\r\n"):
            if line.strip():
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
        parts.append((headers, data))
    assert closed, "multipart body has no closing delimiter"
    return parts
