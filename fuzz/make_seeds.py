#!/usr/bin/env python3
"""Writes the seed corpus under fuzz/corpus/: realistic inputs in each target's layout.

Run from anywhere: python3 fuzz/make_seeds.py. The files are committed; rerun after changing
an input layout.
"""
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent / "corpus"

# http1_session layout: a flags byte, then records (control, length, bytes).
SERVER, CLIENT = 0, 1
DEFAULT, TINY, SMALL = 0 << 1, 1 << 1, 2 << 1
DRAIN = 8
REQ, RESP, CLOSE, CUT, NOTHING_SEEN, WIDE_GAP = 0, 1, 2, 4, 8, 64


def records(flags, *events):
    out = bytearray([flags])
    for event in events:
        if event == "close":
            out += bytes([CLOSE, 0])
            continue
        ctl, data, *gap = event
        for i in range(0, max(len(data), 1), 255):
            part = data[i:i + 255]
            wide = bool(gap) and gap[0] > 0xFFFF
            out += bytes([ctl | (CUT if gap else 0) | (WIDE_GAP if wide else 0), len(part)])
            if gap:
                out += struct.pack("<Q" if wide else "<H", gap[0])
            out += part
    return bytes(out)


GET = b"GET /users/42?x=1 HTTP/1.1\r\nHost: api\r\nUser-Agent: curl/8\r\n" \
      b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" \
          b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
POST = b"POST /orders HTTP/1.1\r\nHost: api\r\nContent-Length: 11\r\n" \
       b"Expect: 100-continue\r\n\r\n"

SESSION = {
    "get_ok": records(SERVER | DEFAULT | DRAIN, (REQ, GET), (RESP, OK)),
    "pipelined": records(
        SERVER | DEFAULT | DRAIN,
        (REQ, GET + b"GET /health HTTP/1.1\r\nHost: api\r\n\r\n"),
        (RESP, OK + b"HTTP/1.1 204 No Content\r\n\r\n"),
    ),
    "chunked_split": records(
        CLIENT | DEFAULT,
        (REQ, GET),
        (RESP, CHUNKED[:40]),
        (RESP, CHUNKED[40:63]),
        (RESP, CHUNKED[63:]),
        "close",
    ),
    "post_continue": records(
        SERVER | SMALL | DRAIN,
        (REQ, POST),
        (RESP, b"HTTP/1.1 100 Continue\r\n\r\n"),
        (REQ, b"hello world"),
        (RESP, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
    ),
    "chunked_request_until_close": records(
        CLIENT | DEFAULT | DRAIN,
        (REQ, b"PUT /blob HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n"),
        (RESP, b"HTTP/1.0 200 OK\r\n\r\nbody until close"),
        "close",
    ),
    "cut_capture": records(
        SERVER | DEFAULT | DRAIN,
        (REQ, GET[:30], 4000),
        (RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 9000\r\n\r\n", 9000),
        (NOTHING_SEEN, b"x" * 10, 500),
        (REQ, b"GET /next HTTP/1.1\r\n\r\n"),
    ),
    # A corrupt record's count once overflowed the chunked decoder's guess of the CRLF.
    "huge_gap_after_chunk_cr": records(
        SERVER | DEFAULT,
        (REQ, b"GET / HTTP/1.1\r\n\r\n"),
        (RESP, CHUNKED[:CHUNKED.index(b"hello\r") + 6]),
        (RESP | NOTHING_SEEN, b"", 2**64 - 1),
    ),
    "upgrade": records(
        SERVER | DEFAULT | DRAIN,
        (REQ, b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
        (RESP, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"),
        (REQ, b"\x81\x05hello"),
        (RESP, b"\x81\x02ok"),
    ),
    "small_limits_pipelining": records(
        CLIENT | SMALL,
        (REQ, b"GET / HTTP/1.1\r\n" + b"X-Long: " + b"a" * 300 + b"\r\n\r\n"),
        (RESP, b"\x16\x03\x01 not http"),
        (REQ, GET * 5),
        (RESP, OK),
    ),
}

# http1_head layout: limits selector, split point, head.
HEAD = {
    "request": b"\x00\x10" + GET,
    "response": b"\x00\x20" + OK,
    "chunked_response": b"\x00\x07" + CHUNKED,
    "many_headers": b"\x01\x05" + b"GET / HTTP/1.1\r\n" + b"".join(
        b"H%d: v\r\n" % i for i in range(10)) + b"\r\n",
    "obs_fold": b"\x03\x30HTTP/1.0 404 Not Found\r\nX-A: a\r\n  folded\r\n\r\n",
    "cut_start_line": b"\x00\x00POST /very/long/target/that/was/cut",
}

TRACE = {
    "w3c": b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\n"
           b"tracestate: rojo=00f067aa0ba902b7\ntracestate: congo=t61rcWkgMzE\n",
    "w3c_future": b"traceparent: cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-extra\n",
    "b3_single": b"b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90\n",
    "b3_multi": b"X-B3-TraceId: a3ce929d0e0e4736\nX-B3-SpanId: e457b5a2e4d86bd1\n"
                b"X-B3-Sampled: true\nX-B3-Flags: 1\n",
    "jaeger": b"uber-trace-id: abc%3Adef%3A0%3A1\n",
    "zero_ids": b"traceparent: 00-00000000000000000000000000000000-00f067aa0ba902b7-01\n"
                b"b3: 0000000000000000-e457b5a2e4d86bd1\n",
}

ROUTE = {
    "ids": b"/api/v1/users/123/orders/5f9b2c7e8d1a4b3c2d1e0f9a",
    "uuid_query": b"//orders/123e4567-e89b-12d3-a456-426614174000/items/?page=2#top",
    "absolute": b"http://example.com:8080/static/app.4f3a9c.js",
    "patterns": b"/orders/{id}\n/users/{user}/items/{item}\n/static/*\n/users/7/items/ord_12345",
    "deep": b"/a" * 20,
}


def main():
    for target, seeds in [("http1_session", SESSION), ("http1_head", HEAD),
                          ("trace_context", TRACE), ("route", ROUTE)]:
        folder = ROOT / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (folder / name).write_bytes(data)


if __name__ == "__main__":
    main()
