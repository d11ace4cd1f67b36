// Entry point: one process, or WORKERS processes behind the cluster module.
import cluster from 'node:cluster';
import process from 'node:process';
import { buildApp, createPool } from './app.js';

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
  const app = buildApp({ pool, staticDir: process.env.STATIC_DIR });
  app.addHook('onClose', async () => pool.end());
  try {
    await app.listen({ port, host });
    if (!cluster.isWorker) console.log(`fastify peer listening on http://${host}:${port}`);
  } catch (err) {
    console.error(err);
    process.exit(1);
  }
  const stop = () => {
    setTimeout(() => process.exit(0), 10_000).unref();
    app.close().then(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
