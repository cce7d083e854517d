// An HTTP server with the article's SIGTERM handler whose event loop then blocks, so
// the handler can never run: the kernel delivers SIGTERM to node's handler, and
// nothing follows until SIGKILL.
const http = require('http');
const server = http.createServer((req, res) => res.end('ok'));
server.listen(0, '127.0.0.1', () => {
  process.on('SIGTERM', () => server.close(() => process.exit(0)));
  console.log(`ready ${server.address().port}`);
  setTimeout(() => { for (;;) {} }, 50); // a synchronous task that never ends
});
