// The article's correct handler: stop accepting, drain, close, exit 0, with a timeout
// fallback. Node 19+ server.close() also closes idle keep-alive connections.
const http = require('http');
const server = http.createServer((req, res) => res.end('ok\n'));
server.listen(Number(process.env.PORT || 0), '127.0.0.1');
function shutdown(signal) {
  console.log(`${signal} received — draining`);
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(1), 10_000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
