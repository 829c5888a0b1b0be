// frontend-deferred: the walkthrough's frontend-api, except that each handler waits a
// moment (a timer of 0-3 ms, standing in for a cache lookup or an auth check) before it
// calls upstream, so under concurrency other requests arrive in between. An ordinary Node
// service with no tracing code.
// Usage: node frontend-deferred.js PORT UPSTREAM_PORT
const http = require('http');

const port = parseInt(process.argv[2] || '3000', 10);
const upstreamPort = parseInt(process.argv[3] || '8000', 10);
const agent = new http.Agent({ keepAlive: true });

function reply(res, status, text) {
  res.writeHead(status, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

http.createServer((req, res) => {
  const match = req.url.match(/^\/api\/items\/([^/?]+)/);
  if (!match) {
    reply(res, 404, 'not found\n');
    return;
  }
  setTimeout(() => {
    const call = http.request(
      { host: '127.0.0.1', port: upstreamPort, path: '/process/' + match[1], agent },
      (upstream) => {
        let body = '';
        upstream.on('data', (chunk) => { body += chunk; });
        upstream.on('end', () => {
          reply(res, upstream.statusCode, 'frontend-api got: ' + body);
        });
      },
    );
    call.on('error', (err) => {
      reply(res, 502, 'upstream error: ' + err.message + '\n');
    });
    call.end();
  }, Math.random() * 3);
}).listen(port, '127.0.0.1');
