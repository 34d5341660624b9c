// node-redis (npm `redis`) with its default settings against msglog: the checks of
// tests/redis_clients.rs. MSGLOG_PORT names the server; prints `restart` and waits for a
// line on stdin when the server is to be restarted, and `ok` when done.
const assert = require('node:assert/strict');
const readline = require('node:readline');
const { createClient, createClientPool } = require('redis');

const url = `redis://127.0.0.1:${process.env.MSGLOG_PORT}`;
const stdin = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => stdin.once('line', resolve));

async function main() {
  const client = createClient({ url }); // defaults: RESP3 (HELLO 3), reconnects forever
  client.on('error', () => {}); // reconnection errors while the server restarts
  await client.connect();
  assert.equal(await client.ping(), 'PONG');
  assert.match(await client.clientInfo().then((i) => `resp=${i.resp}`), /resp=3/);

  const binary = Buffer.concat([Buffer.from([...Array(256).keys()]), Buffer.from('\r\n')]);
  assert.equal(await client.set(Buffer.from('node:bin\xff', 'latin1'), binary), 'OK');
  const got = await client.withTypeMapping({ [36]: Buffer }).get(Buffer.from('node:bin\xff', 'latin1'));
  assert.ok(Buffer.isBuffer(got) && got.equals(binary), 'binary value round-trips');
  await client.set('node:a', '1');
  await client.set('node:b', '2');
  assert.deepEqual(await client.mGet(['node:a', 'node:missing', 'node:b']), ['1', null, '2']);

  const sets = client.multi();
  for (let i = 0; i < 1000; i++) sets.set(`node:p${i}`, `${i}`);
  assert.deepEqual(await sets.execAsPipeline(), Array(1000).fill('OK'));
  const gets = await Promise.all([...Array(1000).keys()].map((i) => client.get(`node:p${i}`)));
  assert.deepEqual(gets, [...Array(1000).keys()].map(String));

  // multi().exec() is MULTI/EXEC; a concurrent reader must never see half of one.
  await client.mSet({ 'node:left': '0', 'node:right': '0' });
  const reader = await createClient({ url }).on('error', () => {}).connect();
  let stop = false;
  const torn = [];
  const reading = (async () => {
    while (!stop) {
      const [left, right] = await reader.mGet(['node:left', 'node:right']);
      if (left !== right) torn.push([left, right]);
    }
  })();
  for (let i = 1; i <= 200; i++) {
    const replies = await client.multi().set('node:left', `${i}`).get('node:left').set('node:right', `${i}`).exec();
    assert.deepEqual(replies, ['OK', `${i}`, 'OK']);
  }
  stop = true;
  await reading;
  await reader.quit();
  assert.deepEqual(torn, [], 'a reader saw half a transaction');

  // A pool of 20 connections, all busy at once.
  const pool = await createClientPool({ url }, { minimum: 20, maximum: 20 }).on('error', () => {}).connect();
  await Promise.all([...Array(20).keys()].map(async (n) => {
    for (let i = 0; i < 50; i++) {
      await pool.set(`node:pool${n}:${i}`, `${n}:${i}`);
      assert.equal(await pool.get(`node:pool${n}:${i}`), `${n}:${i}`);
    }
  }));
  await pool.close();

  // The same client reconnects after the server restarts on the same port.
  await client.set('node:durable', 'before restart');
  console.log('restart');
  await nextLine();
  const deadline = Date.now() + 30000;
  let value;
  for (;;) {
    try {
      value = await client.get('node:durable');
      break;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  assert.equal(value, 'before restart');
  assert.equal(await client.set('node:after', 'x'), 'OK');
  await client.quit();
  stdin.close();
  console.log('ok');
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
