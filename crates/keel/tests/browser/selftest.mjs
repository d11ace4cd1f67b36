// Checks the two helper servers on their own, without keel or a browser:
// `node --test selftest.mjs` (or `npm run selftest`).

import assert from 'node:assert/strict';
import net from 'node:net';
import test from 'node:test';

import { startSmtpSink, startWebhookReceiver } from './servers.mjs';

/// Speaks one SMTP conversation; returns every reply line.
function smtpSession(port, commands) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    const replies = [];
    let buffer = '';
    let sent = 0;
    socket.setEncoding('utf8');
    socket.on('error', reject);
    socket.on('data', (chunk) => {
      buffer += chunk;
      let index;
      while ((index = buffer.indexOf('\r\n')) !== -1) {
        const line = buffer.slice(0, index);
        buffer = buffer.slice(index + 2);
        replies.push(line);
        // A final reply line has a space after the code; send the next command then.
        if (/^\d{3} /.test(line)) {
          if (sent < commands.length) socket.write(`${commands[sent++]}\r\n`);
        }
      }
    });
    socket.on('end', () => resolve(replies));
  });
}

test('the SMTP sink takes a message and records its envelope and body', async () => {
  const sink = await startSmtpSink(0);
  try {
    const replies = await smtpSession(sink.port, [
      'EHLO client.test',
      'MAIL FROM:<keel@localhost> BODY=8BITMIME',
      'RCPT TO:<Ada@Example.com>',
      'DATA',
      'Subject: hi\r\n\r\nline one\r\n..dot line\r\n.',
      'QUIT',
    ]);
    const codes = replies.filter((l) => /^\d{3} /.test(l)).map((l) => l.slice(0, 3));
    assert.deepEqual(codes, ['220', '250', '250', '250', '354', '250', '221']);
    const message = await sink.waitFor('ada@example.com', 1000);
    assert.ok(message, 'the message arrived');
    assert.equal(message.from, 'keel@localhost');
    assert.deepEqual(message.to, ['Ada@Example.com']);
    assert.match(message.data, /Subject: hi/);
    assert.match(message.data, /\r\n\.dot line$/);
    assert.equal(await sink.waitFor('nobody@example.com', 50), null);
  } finally {
    await sink.close();
  }
});

test('the webhook receiver answers 500 to the first POST and 200 afterwards', async () => {
  const receiver = await startWebhookReceiver();
  try {
    const send = (id) => fetch(`${receiver.url}/hook`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'webhook-id': id },
      body: JSON.stringify({ type: 'user.created' }),
    });
    assert.equal((await send('msg_1')).status, 500);
    assert.equal((await send('msg_1')).status, 200);
    assert.equal((await send('msg_2')).status, 200);
    const posts = await receiver.waitForPosts(3, 1000);
    assert.deepEqual(posts.map((p) => p.headers['webhook-id']), ['msg_1', 'msg_1', 'msg_2']);
    assert.deepEqual(posts.map((p) => p.status), [500, 200, 200]);
    assert.equal(JSON.parse(posts[0].body).type, 'user.created');
    assert.equal(await receiver.waitForPosts(4, 50), null);
  } finally {
    await receiver.close();
  }
});
