// The two HTTP pieces the chain's Node frontends share: answering a request, and a GET
// upstream over a keep-alive agent that resolves to its status and body.
const http = require('http');

const agent = new http.Agent({ keepAlive: true });

function reply(res, status, text) {
  res.writeHead(status, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

function get(port, path) {
  return new Promise((resolve, reject) => {
    const call = http.request({ host: '127.0.0.1', port, path, agent }, (response) => {
      let body = '';
      response.on('data', (chunk) => { body += chunk; });
      response.on('end', () => resolve({ status: response.statusCode, body }));
    });
    call.on('error', reject);
    call.end();
  });
}

module.exports = { reply, get };
