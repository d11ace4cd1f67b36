// Entry point: one process, or WORKERS processes behind the cluster module.
import cluster from 'node:cluster';
import process from 'node:process';
import { createApp, createPool } from './app.js';

const workers = Math.max(1, Number.parseInt(process.env.WORKERS ?? '1', 10) || 1);
const port = Number.parseInt(process.env.PORT ?? '3000', 10);
const host = process.env.HOST ?? '127.0.0.1';

if (workers > 1 && cluster.isPrimary) {
  let shuttingDown = false;
  for (let i = 0; i < workers; i++) cluster.fork();
  cluster.on('exit', (worker, code, signal) => {
    if (!shuttingDown) {
      console.error(`worker ${worker.process.pid} exited (${signal ?? code}); starting another`);
      cluster.fork();
    }
  });
  const stop = () => {
    shuttingDown = true;
    for (const worker of Object.values(cluster.workers)) worker?.kill('SIGTERM');
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  const pool = createPool();
  const app = createApp({ pool, staticDir: process.env.STATIC_DIR });
  const server = app.listen(port, host, (err) => {
    if (err) throw err;
    if (!cluster.isWorker) console.log(`express peer listening on http://${host}:${port}`);
  });
  server.keepAliveTimeout = 65_000;
  const stop = () => {
    server.close(() => pool.end().finally(() => process.exit(0)));
    server.closeIdleConnections();
    setTimeout(() => process.exit(0), 10_000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
