// frontend-api: an ordinary Node service with no tracing code. It answers
// GET /api/items/<id> by asking data-processor for /process/<id> over a keep-alive
// connection; /api/items/fail makes data-processor fail, and the failure travels back.
// Usage: node frontend-api.js PORT DATA_PROCESSOR_PORT
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
}).listen(port, '127.0.0.1');
