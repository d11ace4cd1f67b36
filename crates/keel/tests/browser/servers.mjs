// Two tiny servers the console scenarios talk to: an SMTP sink that accepts every message,
// and an HTTP receiver for webhook deliveries. Both listen on 127.0.0.1 only.

import net from 'node:net';
import http from 'node:http';

/// An SMTP server that accepts everything and keeps each message as
/// `{ from, to: [addresses], data }`. No TLS, no AUTH: keel's `smtp://` URL without
/// `tls=required` speaks plain SMTP.
export async function startSmtpSink(port, host = '127.0.0.1') {
  const messages = [];
  const waiters = [];
  const sockets = new Set();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    socket.setEncoding('latin1');
    let buffer = '';
    let inData = false;
    let envelope = { from: null, to: [] };
    let data = [];
    const reply = (line) => socket.write(`${line}\r\n`);
    reply('220 sink.keel.test ESMTP test sink');
    socket.on('data', (chunk) => {
      buffer += chunk;
      let index;
      while ((index = buffer.indexOf('\r\n')) !== -1) {
        const line = buffer.slice(0, index);
        buffer = buffer.slice(index + 2);
        if (inData) {
          if (line === '.') {
            inData = false;
            const message = { from: envelope.from, to: envelope.to, data: data.join('\r\n') };
            messages.push(message);
            envelope = { from: null, to: [] };
            data = [];
            reply('250 2.0.0 queued');
            for (const waiter of waiters.splice(0)) waiter();
          } else {
            // Dot-stuffing: a leading '..' stands for '.'.
            data.push(line.startsWith('..') ? line.slice(1) : line);
          }
          continue;
        }
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === 'EHLO') {
          socket.write('250-sink.keel.test\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n');
        } else if (verb === 'HELO') {
          reply('250 sink.keel.test');
        } else if (verb === 'MAIL') {
          envelope = { from: address(line), to: [] };
          reply('250 2.1.0 ok');
        } else if (verb === 'RCPT') {
          envelope.to.push(address(line));
          reply('250 2.1.5 ok');
        } else if (verb === 'DATA') {
          inData = true;
          reply('354 end data with <CR><LF>.<CR><LF>');
        } else if (verb === 'QUIT') {
          reply('221 2.0.0 bye');
          socket.end();
        } else {
          // RSET, NOOP and anything else: fine.
          reply('250 ok');
        }
      }
    });
  });
  await listen(server, port, host);
  return {
    port: server.address().port,
    messages,
    /// Resolves with the first message whose envelope goes to `to`, waiting up to `ms`.
    async waitFor(to, ms) {
      const deadline = Date.now() + ms;
      for (;;) {
        const found = messages.find((m) => m.to.some((t) => t.toLowerCase() === to.toLowerCase()));
        if (found) return found;
        const left = deadline - Date.now();
        if (left <= 0) return null;
        await new Promise((resolve) => {
          const timer = setTimeout(resolve, left);
          waiters.push(() => { clearTimeout(timer); resolve(); });
        });
      }
    },
    close: () => closeServer(server, sockets),
  };
}

/// The address inside `MAIL FROM:<a@b> SIZE=1` or `RCPT TO:<a@b>`.
function address(line) {
  const match = /<([^>]*)>/.exec(line);
  return match ? match[1] : line.slice(line.indexOf(':') + 1).trim();
}

/// An HTTP server that records every request (`{ method, url, headers, body }`) and answers
/// `statusFor(n)` to the n-th POST (0-based): by default 500 to the first, 200 afterwards.
export async function startWebhookReceiver({ port = 0, host = '127.0.0.1', statusFor = (n) => (n === 0 ? 500 : 200) } = {}) {
  const requests = [];
  const waiters = [];
  const sockets = new Set();
  let posts = 0;
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      let status = 200;
      if (req.method === 'POST') {
        status = statusFor(posts);
        posts += 1;
      }
      requests.push({ method: req.method, url: req.url, headers: req.headers, body, status, at: Date.now() });
      res.writeHead(status, { 'content-type': 'text/plain' });
      res.end(status >= 400 ? 'receiver says no (test)' : 'ok');
      for (const waiter of waiters.splice(0)) waiter();
    });
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await listen(server, port, host);
  return {
    port: server.address().port,
    url: `http://${host}:${server.address().port}`,
    requests,
    /// Resolves with the POSTs once there are at least `count`, or null after `ms`.
    async waitForPosts(count, ms) {
      const deadline = Date.now() + ms;
      for (;;) {
        const seen = requests.filter((r) => r.method === 'POST');
        if (seen.length >= count) return seen;
        const left = deadline - Date.now();
        if (left <= 0) return null;
        await new Promise((resolve) => {
          const timer = setTimeout(resolve, left);
          waiters.push(() => { clearTimeout(timer); resolve(); });
        });
      }
    },
    close: () => closeServer(server, sockets),
  };
}

function listen(server, port, host) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

function closeServer(server, sockets) {
  for (const socket of sockets) socket.destroy();
  return new Promise((resolve) => server.close(() => resolve()));
}
