// ioredis with its default settings against msglog: the checks of tests/redis_clients.rs.
// MSGLOG_PORT names the server; prints `restart` and waits for a line on stdin when the
// server is to be restarted, and `ok` when done.
const assert = require('node:assert/strict');
const readline = require('node:readline');
const Redis = require('ioredis');

const port = Number(process.env.MSGLOG_PORT);
const stdin = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => stdin.once('line', resolve));

async function main() {
  const client = new Redis(port, '127.0.0.1'); // defaults: RESP2, reconnects, offline queue
  client.on('error', () => {}); // reconnection errors while the server restarts
  assert.equal(await client.ping(), 'PONG');

  const binary = Buffer.concat([Buffer.from([...Array(256).keys()]), Buffer.from('\r\n')]);
  assert.equal(await client.set(Buffer.from('io:bin\xff', 'latin1'), binary), 'OK');
  assert.ok((await client.getBuffer(Buffer.from('io:bin\xff', 'latin1'))).equals(binary));
  await client.set('io:a', '1');
  await client.set('io:b', '2');
  assert.deepEqual(await client.mget('io:a', 'io:missing', 'io:b'), ['1', null, '2']);

  const sets = client.pipeline();
  for (let i = 0; i < 1000; i++) sets.set(`io:p${i}`, `${i}`);
  assert.deepEqual(await sets.exec(), Array(1000).fill([null, 'OK']));
  const gets = client.pipeline();
  for (let i = 0; i < 1000; i++) gets.get(`io:p${i}`);
  assert.deepEqual(await gets.exec(), [...Array(1000).keys()].map((i) => [null, `${i}`]));

  // multi().exec() is MULTI/EXEC; a concurrent reader must never see half of one.
  await client.mset('io:left', '0', 'io:right', '0');
  const reader = new Redis(port, '127.0.0.1');
  let stop = false;
  const torn = [];
  const reading = (async () => {
    while (!stop) {
      const [left, right] = await reader.mget('io:left', 'io:right');
      if (left !== right) torn.push([left, right]);
    }
  })();
  for (let i = 1; i <= 200; i++) {
    const replies = await client.multi().set('io:left', `${i}`).get('io:left').set('io:right', `${i}`).exec();
    assert.deepEqual(replies, [[null, 'OK'], [null, `${i}`], [null, 'OK']]);
  }
  stop = true;
  await reading;
  reader.disconnect();
  assert.deepEqual(torn, [], 'a reader saw half a transaction');

  // A pool of 20 connections (ioredis has none built in: 20 clients), all busy at once.
  const pool = [...Array(20).keys()].map(() => new Redis(port, '127.0.0.1'));
  await Promise.all(pool.map(async (c, n) => {
    for (let i = 0; i < 50; i++) {
      await c.set(`io:pool${n}:${i}`, `${n}:${i}`);
      assert.equal(await c.get(`io:pool${n}:${i}`), `${n}:${i}`);
    }
  }));
  pool.forEach((c) => c.disconnect());

  // The same client reconnects after the server restarts on the same port.
  await client.set('io:durable', 'before restart');
  console.log('restart');
  await nextLine();
  const deadline = Date.now() + 30000;
  let value;
  for (;;) {
    try {
      value = await client.get('io:durable');
      break;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  assert.equal(value, 'before restart');
  assert.equal(await client.set('io:after', 'x'), 'OK');
  client.disconnect();
  stdin.close();
  console.log('ok');
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
