//! The unmodified servers the tests trace: Python's stdlib ThreadingHTTPServer, Node's
//! http module and nginx. Each answers the same paths:
//! `/ok` 200, `/missing` 404, `/fail` 500, `/slow` 200 after 300 ms, anything else 200.
//! The Python server also answers `/check/<name>~<check_ms>~<item_ms>` after `check_ms`
//! and `/process/<name>~<check_ms>~<item_ms>` after `item_ms`, for the frontend of
//! `examples/chain/frontend-awaits.js`.

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Stdio},
};

use super::{Guard, scratch_dir, wait_for_port};

pub const SLOW_MS: u64 = 300;

const PYTHON_SERVER: &str = r#"
import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        path = self.path.split("?")[0]
        status = {"/missing": 404, "/fail": 500}.get(path, 200)
        if path == "/slow":
            time.sleep(0.3)
        if "~" in path:
            check_ms, item_ms = path.split("~")[1:3]
            time.sleep(int(check_ms if path.startswith("/check/") else item_ms) / 1000)
        body = ("python %s\n" % path).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        data = self.rfile.read(length)
        body = ("got %d\n" % len(data)).encode()
        self.send_response(201)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"#;

const NODE_SERVER: &str = r#"
const http = require('http');
const port = parseInt(process.argv[2], 10);
http.createServer((req, res) => {
  const path = req.url.split('?')[0];
  const status = { '/missing': 404, '/fail': 500 }[path] || 200;
  const reply = () => { res.writeHead(status, { 'Content-Type': 'text/plain' }); res.end('node ' + path + '\n'); };
  if (path === '/slow') setTimeout(reply, 300); else reply();
}).listen(port, '127.0.0.1');
"#;

/// An HTTP/1.1 server on raw sockets that moves its bytes only with the scatter/gather
/// syscalls: `recvmsg` and `sendmsg` (mode `msg`), or `readv` and `writev` (mode `vec`).
/// Requests land in two buffers, the first 16 bytes long so that a request line spans
/// both. A response goes out as two buffers split inside its status line (split
/// `status`), or as its head and then its body (split `head`, as nginx writes). `/chunked`
/// answers with a chunked body. Keep-alive, one thread per connection.
const SCATTER_GATHER_SERVER: &str = r#"
import os, socket, sys, threading

MODE, SPLIT = sys.argv[2], sys.argv[3]

def receive(conn):
    first, second = bytearray(16), bytearray(4096)
    if MODE == "msg":
        n = conn.recvmsg_into([first, second])[0]
    else:
        n = os.readv(conn.fileno(), [first, second])
    return bytes(first + second)[:n]

def send(conn, head, body):
    if SPLIT == "head":
        parts = [head, body]
    else:
        parts = [(head + body)[:12], (head + body)[12:]]
    if MODE == "msg":
        conn.sendmsg(parts)
    else:
        os.writev(conn.fileno(), parts)

def serve(conn):
    pending = b""
    while True:
        while b"\r\n\r\n" not in pending:
            data = receive(conn)
            if not data:
                conn.close()
                return
            pending += data
        head, pending = pending.split(b"\r\n\r\n", 1)
        path = head.split(b" ")[1].decode()
        status = {"/missing": 404, "/fail": 500}.get(path, 200)
        body = ("%s %s\n" % (MODE, path)).encode()
        reason = {200: "OK", 404: "Not Found", 500: "Internal Server Error"}[status]
        if path == "/chunked":
            framing = "Transfer-Encoding: chunked"
            body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        else:
            framing = "Content-Length: %d" % len(body)
        head = ("HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\n%s\r\n\r\n"
                % (status, reason, framing)).encode()
        send(conn, head, body)

listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", int(sys.argv[1])))
listener.listen(16)
while True:
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;

/// Python defining `serve_ok(port)`: an HTTP/1.1 server answering every GET with `ok`,
/// for test scripts that start one in a process of their own making (a fork that never
/// calls exec). The script's own code follows it.
pub const PYTHON_SERVE_OK: &str = r#"
from http.server import BaseHTTPRequestHandler, HTTPServer

class OkHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass

def serve_ok(port):
    HTTPServer(("127.0.0.1", port), OkHandler).serve_forever()
"#;

/// Python defining `take_pid(target)`: forks until a child gets the pid `target`
/// (through `ns_last_pid`, as root) and returns in that child, which never calls exec;
/// the parent prints the pid, waits for that child and exits. For tests of a pid that a
/// new process takes over. The script's own code follows it.
pub const PYTHON_TAKE_PID: &str = r#"
import os, sys, time

def take_pid(target):
    deadline = time.time() + 10
    while time.time() < deadline:
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(target - 1))
        pid = os.fork()
        if pid == 0:
            if os.getpid() == target:
                return
            os._exit(0)
        if pid == target:
            print(pid, flush=True)
            os.waitpid(pid, 0)
            sys.exit(0)
        os.waitpid(pid, 0)
    sys.exit("pid %d stayed taken" % target)
"#;

/// A Python server (`python3 -c LATE_ACCEPTING_SERVER PORT WHEN`) that listens at once
/// but takes its first connection only later, as a busy server does: the connection
/// waits in its accept queue. WHEN is a number of seconds, or a file to wait for.
pub const LATE_ACCEPTING_SERVER: &str = r#"
import os, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        body = b"late\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
try:
    time.sleep(float(sys.argv[2]))
except ValueError:
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.05)
server.serve_forever()
"#;

/// Starts the scatter/gather server in `mode` (`msg` or `vec`), its responses split at
/// `split` (`status` or `head`).
pub fn scatter_gather(port: u16, mode: &str, split: &str, env: &[(&str, &str)]) -> Guard {
    let dir = scratch_dir(&format!("scatter-gather-{mode}-{split}"));
    let script = dir.join("server.py");
    fs::write(&script, SCATTER_GATHER_SERVER).expect("write server.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script).arg(port.to_string()).arg(mode).arg(split);
    spawn(cmd, env, port)
}

/// Starts `python3 server.py PORT` with the given environment.
pub fn python(port: u16, env: &[(&str, &str)]) -> Guard {
    let dir = scratch_dir("python");
    let script = dir.join("server.py");
    fs::write(&script, PYTHON_SERVER).expect("write server.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script).arg(port.to_string());
    spawn(cmd, env, port)
}

/// Starts the Python server as [`python`] does, through `wrapper`: a command that ends by
/// exec'ing the words that follow it.
pub fn python_wrapped(port: u16, wrapper: &[&str], env: &[(&str, &str)]) -> Guard {
    let dir = scratch_dir("python-wrapped");
    let script = dir.join("server.py");
    fs::write(&script, PYTHON_SERVER).expect("write server.py");
    let mut cmd = Command::new(wrapper[0]);
    cmd.args(&wrapper[1..])
        .arg("python3")
        .arg(&script)
        .arg(port.to_string());
    spawn(cmd, env, port)
}

pub fn node(port: u16, env: &[(&str, &str)]) -> Guard {
    node_program("node", NODE_SERVER, &[port], port, env)
}

/// Starts `node SOURCE ARGS...`, `source` written as `<name>/server.js` in the scratch
/// directory, which serves on `port`.
pub fn node_program(
    name: &str,
    source: &str,
    args: &[u16],
    port: u16,
    env: &[(&str, &str)],
) -> Guard {
    let script = scratch_dir(name).join("server.js");
    fs::write(&script, source).expect("write server.js");
    let mut cmd = Command::new("node");
    cmd.arg(&script).args(args.iter().map(u16::to_string));
    spawn(cmd, env, port)
}

/// Starts `program examples/SCRIPT ARGS...` (`node` or `python3`), which serves on `port`.
pub fn example(
    program: &str,
    script: &str,
    args: &[u16],
    port: u16,
    env: &[(&str, &str)],
) -> Guard {
    let mut cmd = Command::new(program);
    cmd.arg(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(script),
    )
    .args(args.iter().map(u16::to_string));
    spawn(cmd, env, port)
}

/// nginx in the foreground with one worker, keep-alive, and `sendfile` for a static file.
pub fn nginx(port: u16) -> Guard {
    let dir = scratch_dir("nginx");
    let www = dir.join("www");
    fs::create_dir_all(&www).expect("www dir");
    fs::write(www.join("file.txt"), "x".repeat(20_000)).expect("static file");
    let http = format!(
        r#"    sendfile on;
    server {{
        listen 127.0.0.1:{port};
        location = /ok {{ return 200 "nginx ok\n"; }}
        location = /missing {{ return 404 "nginx missing\n"; }}
        location = /fail {{ return 500 "nginx fail\n"; }}
        location /static/ {{ alias {www}/; }}
        location / {{ return 200 "nginx\n"; }}
    }}
"#,
        www = www.display(),
    );
    start_nginx(&dir, &http, port)
}

/// nginx in the foreground with one worker, passing every request on to the server at
/// `upstream`: by default over a new connection per request (HTTP/1.0), with `keepalive`
/// over a pool of HTTP/1.1 keep-alive connections.
pub fn nginx_proxy(port: u16, upstream: u16, keepalive: bool) -> Guard {
    let dir = scratch_dir("nginx-proxy");
    let (pool, upstream_http) = if keepalive {
        (
            "keepalive 8;",
            "proxy_http_version 1.1; proxy_set_header Connection \"\";",
        )
    } else {
        ("", "")
    };
    let http = format!(
        r#"    upstream backend {{ server 127.0.0.1:{upstream}; {pool} }}
    server {{
        listen 127.0.0.1:{port};
        location / {{ proxy_pass http://backend; {upstream_http} }}
    }}
"#
    );
    start_nginx(&dir, &http, port)
}

/// Starts nginx with one worker, its files under `dir`, and `http` inside its `http` block.
fn start_nginx(dir: &Path, http: &str, port: u16) -> Guard {
    let conf = format!(
        r#"worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{http}}}
"#,
        dir = dir.display(),
    );
    let conf_path = dir.join("nginx.conf");
    fs::write(&conf_path, conf).expect("nginx.conf");
    let mut cmd = Command::new(nginx_bin());
    cmd.arg("-c").arg(&conf_path).arg("-p").arg(dir);
    spawn(cmd, &[], port)
}

/// busybox httpd in the foreground serving the files in `dir`: a child per connection
/// that reads the request on stdin and writes the answer on stdout, as inetd-style
/// servers do (`cargo xtask setup` installs busybox-static).
pub fn busybox_httpd(port: u16, dir: &Path) -> Guard {
    let mut cmd = Command::new("busybox");
    cmd.args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
        .arg(dir);
    spawn(cmd, &[], port)
}

fn nginx_bin() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

fn spawn(mut cmd: Command, env: &[(&str, &str)], port: u16) -> Guard {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group, which the guard kills whole.
        .process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let guard = Guard(cmd.spawn().expect("spawn server"));
    wait_for_port(port);
    guard
}
