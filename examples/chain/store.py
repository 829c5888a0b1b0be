"""store: a key-value store over a small binary protocol, standing in for a database or
a cache that loupe does not parse. Each request is a 2-byte big-endian length and a key;
the answer is framed the same way. A key `<name>~<store_ms>~...` is answered after
store_ms milliseconds. One thread per connection, connections kept open.
Usage: python3 store.py PORT"""
import socketserver
import struct
import sys
import time


def read_exactly(stream, size):
    data = b""
    while len(data) < size:
        chunk = stream.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            head = read_exactly(self.request, 2)
            if head is None:
                return
            key = read_exactly(self.request, struct.unpack(">H", head)[0])
            if key is None:
                return
            parts = key.decode("utf-8", "replace").split("~")
            if len(parts) > 1 and parts[1].isdigit():
                time.sleep(int(parts[1]) / 1000)
            value = b"value of " + key
            self.request.sendall(struct.pack(">H", len(value)) + value)


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


if __name__ == "__main__":
    Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
