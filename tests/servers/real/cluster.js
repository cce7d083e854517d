// A Node `cluster` pre-fork server for tests/tests/real_servers.rs:
// `node cluster.js PORT WORKERS`. The primary forks WORKERS workers that share the
// listener (round-robin: the primary accepts and hands connections over).
//   GET /          answers at once
//   GET /slow?s=N  answers after N seconds (default 2)
// On SIGTERM the primary disconnects the workers (each stops accepting and exits once
// its connections are done; idle keep-alive ones are closed) and exits 0 once they all
// have exited.
const cluster = require('cluster');
const http = require('http');
const [port, workers] = [Number(process.argv[2]), Number(process.argv[3] ?? 2)];
if (cluster.isPrimary) {
  let listening = 0;
  for (let i = 0; i < workers; i++) cluster.fork();
  cluster.on('listening', () => {
    if (++listening === workers) console.log(`ready ${port}`);
  });
  cluster.on('exit', (worker, code, signal) => {
    console.log(`worker ${worker.process.pid} exited code ${code} signal ${signal}`);
  });
  process.on('SIGTERM', () => {
    console.log('SIGTERM: disconnecting workers');
    let running = Object.keys(cluster.workers).length;
    cluster.on('exit', () => {
      if (--running === 0) {
        console.log('workers gone');
        process.exit(0);
      }
    });
    cluster.disconnect();
  });
} else {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (url.pathname === '/slow') {
      setTimeout(() => res.end('ok /slow\n'), 1000 * Number(url.searchParams.get('s') ?? 2));
    } else {
      res.end('ok /\n');
    }
  });
  server.listen(port, '127.0.0.1');
  // cluster's disconnect closes the server (no new connections); idle keep-alive
  // connections would keep the worker alive until their timeout, so close them.
  process.on('disconnect', () => server.closeIdleConnections());
  process.on('message', (m) => m === 'close-idle' && server.closeIdleConnections());
}
