// frontend-store: the walkthrough's frontend-api, except that each handler first awaits a
// lookup in a key-value store over a binary protocol (store.py, standing in for a
// database or a cache loupe does not parse), through a pool of kept-open connections, and
// only then calls upstream for /process/<id>. Under concurrency other requests arrive
// while a lookup is out, so the upstream call is made long after its own request was
// read, woken by bytes loupe does not parse. An ordinary Node service with no tracing code.
// Usage: node frontend-store.js PORT UPSTREAM_PORT STORE_PORT
const http = require('http');
const net = require('net');

const port = parseInt(process.argv[2] || '3000', 10);
const upstreamPort = parseInt(process.argv[3] || '8000', 10);
const storePort = parseInt(process.argv[4] || '6000', 10);
const { reply, get } = require('./http-helpers.js');

// The pool: the first idle connection serves a lookup, else a new one is opened.
const pool = [];

function connection() {
  const idle = pool.find((c) => !c.busy);
  if (idle) return idle;
  const conn = { socket: net.connect(storePort, '127.0.0.1'), busy: false, buffer: Buffer.alloc(0), pending: null };
  conn.socket.setNoDelay(true);
  conn.socket.on('data', (data) => {
    conn.buffer = Buffer.concat([conn.buffer, data]);
    if (conn.buffer.length < 2) return;
    const size = conn.buffer.readUInt16BE(0);
    if (conn.buffer.length < 2 + size) return;
    const value = conn.buffer.subarray(2, 2 + size).toString();
    conn.buffer = conn.buffer.subarray(2 + size);
    const { resolve } = conn.pending;
    conn.pending = null;
    conn.busy = false;
    resolve(value);
  });
  conn.socket.on('error', (err) => {
    if (conn.pending) conn.pending.reject(err);
    pool.splice(pool.indexOf(conn), 1);
  });
  pool.push(conn);
  return conn;
}

function lookup(key) {
  return new Promise((resolve, reject) => {
    const conn = connection();
    conn.busy = true;
    conn.pending = { resolve, reject };
    const bytes = Buffer.from(key);
    const frame = Buffer.alloc(2 + bytes.length);
    frame.writeUInt16BE(bytes.length, 0);
    bytes.copy(frame, 2);
    conn.socket.write(frame);
  });
}

http.createServer(async (req, res) => {
  const match = req.url.match(/^\/api\/items\/([^/?]+)/);
  if (!match) {
    reply(res, 404, 'not found\n');
    return;
  }
  try {
    await lookup(match[1]);
    const upstream = await get(upstreamPort, '/process/' + match[1]);
    reply(res, upstream.status, 'frontend-api got: ' + upstream.body);
  } catch (err) {
    reply(res, 502, 'upstream error: ' + err.message + '\n');
  }
}).listen(port, '127.0.0.1');
