// An express app for tests/tests/real_servers.rs: `node express_app.js PORT MODE`.
//   GET /          answers at once
//   GET /slow?s=N  answers after N seconds (default 2)
// MODE none:     no SIGTERM handler of its own (Node's runtime handler re-raises SIGTERM)
// MODE graceful: on SIGTERM stop accepting, close idle keep-alive connections, exit 0
//                once the requests in flight are answered (fallback: exit 1 after 30 s)
const express = require('express');
const [port, mode] = [Number(process.argv[2]), process.argv[3]];
const app = express();
app.get('/', (req, res) => res.send('ok /\n'));
app.get('/slow', (req, res) => {
  setTimeout(() => res.send('ok /slow\n'), 1000 * Number(req.query.s ?? 2));
});
const server = app.listen(port, '127.0.0.1', () => console.log(`ready ${port}`));
if (mode === 'graceful') {
  process.on('SIGTERM', () => {
    console.log('SIGTERM: draining');
    server.close(() => {
      console.log('drained');
      process.exit(0);
    });
    server.closeIdleConnections();
    setTimeout(() => process.exit(1), 30_000).unref();
  });
}
