// frontend-awaits: the walkthrough's frontend-api, except that each handler first awaits
// a check over HTTP (GET /check/<id> from CHECK_PORT, standing in for an auth or a cache
// service) and only then calls upstream for /process/<id>. Under concurrency other
// requests arrive while a check is out, so the upstream call is made long after its own
// request was read. An ordinary Node service with no tracing code.
// Usage: node frontend-awaits.js PORT UPSTREAM_PORT CHECK_PORT
const http = require('http');

const port = parseInt(process.argv[2] || '3000', 10);
const upstreamPort = parseInt(process.argv[3] || '8000', 10);
const checkPort = parseInt(process.argv[4] || String(upstreamPort), 10);
const { reply, get } = require('./http-helpers.js');

http.createServer(async (req, res) => {
  const match = req.url.match(/^\/api\/items\/([^/?]+)/);
  if (!match) {
    reply(res, 404, 'not found\n');
    return;
  }
  try {
    const check = await get(checkPort, '/check/' + match[1]);
    if (check.status !== 200) {
      reply(res, 403, 'check failed\n');
      return;
    }
    const upstream = await get(upstreamPort, '/process/' + match[1]);
    reply(res, upstream.status, 'frontend-api got: ' + upstream.body);
  } catch (err) {
    reply(res, 502, 'upstream error: ' + err.message + '\n');
  }
}).listen(port, '127.0.0.1');
