'use strict';
// npm `socks` (pinned in package-lock.json) through the proxy under test:
// CONNECT (IPv4, IPv6 and domain targets), BIND (announced address, second
// reply naming the peer, bytes both ways), UDP ASSOCIATE (createUDPFrame /
// parseUDPFrame to local UDP echo servers; payload and source checked).
//
// The proxy is started by `python3 proxyctl.py` (same selection by PROXY_KIND
// as the Python tests); it stops when this process closes its stdin or exits.

const { SocksClient } = require('socks');
const child_process = require('child_process');
const crypto = require('crypto');
const dgram = require('dgram');
const net = require('net');
const path = require('path');

const IO_TIMEOUT_MS = 20000; // any single wait in a test
const UDP_WAIT_MS = 3000;    // one echoed datagram
const UDP_TRIES = 3;
const PYTHON = process.env.PYTHON || 'python3';

let failures = 0;
const cleanups = [];

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

function check(cond, msg) {
  if (!cond) throw new Error(msg);
}

const sha = (buf) => crypto.createHash('sha256').update(buf).digest('hex');

// Canonical text of an IP address (IPv6 compressed), for comparing addresses.
function canon(host) {
  if (typeof host !== 'string') return String(host);
  if (net.isIPv6(host)) return new URL(`http://[${host}]/`).hostname.slice(1, -1);
  return host;
}

async function runCase(name, needs, caps, kind, fn) {
  const missing = needs.filter((n) => !caps.includes(n));
  if (missing.length) {
    console.log(`SKIP ${name}: ${kind} lacks ${missing.join(', ')}`);
    return;
  }
  const t0 = Date.now();
  try {
    await withTimeout(fn(), 60000, name);
    console.log(`PASS ${name} (${((Date.now() - t0) / 1000).toFixed(1)}s)`);
  } catch (e) {
    failures++;
    console.log(`FAIL ${name}: ${String((e && e.message) || e).replace(/\s+/g, ' ').slice(0, 600)}`);
    if (e && e.stack) console.error(e.stack);
  }
}

// --- proxy under test -------------------------------------------------------

function startProxy(args = []) {
  return withTimeout(new Promise((resolve, reject) => {
    const child = child_process.spawn(PYTHON, [path.join(__dirname, 'proxyctl.py'), ...args], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    const stop = () => new Promise((res) => {
      if (child.exitCode !== null || child.signalCode !== null) return res();
      const t = setTimeout(() => { child.kill('SIGKILL'); }, 20000);
      child.once('exit', () => { clearTimeout(t); res(); });
      child.stdin.end(); // proxyctl stops the proxy when its stdin closes
    });
    cleanups.push(stop);
    let buf = '';
    child.stdout.on('data', (d) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      const info = JSON.parse(buf.slice(0, nl));
      if (info.error) reject(new Error(`proxy did not start: ${info.error}`));
      else resolve({ ...info, stop });
    });
    child.on('error', reject);
    child.on('exit', (code) => reject(new Error(`proxyctl exited ${code} before the proxy was up`)));
  }), 30000, 'starting the proxy');
}

// --- local servers ------------------------------------------------------------

function tcpEcho(host) {
  return new Promise((resolve, reject) => {
    const server = net.createServer((c) => { c.on('error', () => {}); c.pipe(c); });
    server.on('error', reject);
    server.listen(0, host, () => {
      cleanups.push(() => new Promise((r) => server.close(() => r())));
      resolve(server);
    });
  });
}

function udpEcho(host, tag) {
  return new Promise((resolve, reject) => {
    const sock = dgram.createSocket(net.isIPv6(host) ? 'udp6' : 'udp4');
    sock.on('error', reject);
    sock.on('message', (msg, rinfo) => {
      sock.send(Buffer.concat([Buffer.from(tag), msg]), rinfo.port, rinfo.address);
    });
    sock.bind(0, host, () => {
      cleanups.push(() => new Promise((r) => sock.close(() => r())));
      resolve({ sock, host, port: sock.address().port, tag: Buffer.from(tag) });
    });
  });
}

// Read exactly n bytes from a stream (bounded in time).
function readExactly(stream, n, what) {
  return withTimeout(new Promise((resolve, reject) => {
    const chunks = [];
    let len = 0;
    const onData = (d) => {
      chunks.push(d);
      len += d.length;
      if (len >= n) {
        stream.off('data', onData);
        resolve(Buffer.concat(chunks));
      }
    };
    stream.on('data', onData);
    stream.once('error', reject);
    stream.once('end', () => { if (len < n) reject(new Error(`${what}: EOF after ${len} of ${n} bytes`)); });
    stream.resume();
  }), IO_TIMEOUT_MS, what);
}

// --- cases --------------------------------------------------------------------

async function connectRoundtrip(proxy, host, port, size = 2 << 20) {
  const info = await SocksClient.createConnection({
    proxy: { host: proxy.v4[0], port: proxy.v4[1], type: 5 },
    command: 'connect',
    destination: { host, port },
    timeout: IO_TIMEOUT_MS,
  });
  const sock = info.socket;
  try {
    const data = crypto.randomBytes(size);
    const reading = readExactly(sock, size, 'CONNECT echo');
    sock.write(data);
    const got = await reading;
    check(got.length === size, `echoed ${got.length} bytes, sent ${size}`);
    check(sha(got) === sha(data), 'echoed bytes differ from sent bytes');
  } finally {
    sock.destroy();
  }
}

// BIND to `dst`; the peer connects from peerLocalAddress. With wrongPeerLocalAddress,
// a first connection comes from there and must be refused (closed, no second
// reply) before the right peer connects.
async function bindExchange(proxy, dst, peerLocalAddress, wrongPeerLocalAddress) {
  const client = new SocksClient({
    proxy: { host: proxy.v4[0], port: proxy.v4[1], type: 5 },
    command: 'bind',
    destination: dst,
    timeout: IO_TIMEOUT_MS,
  });
  const bound = new Promise((resolve, reject) => {
    client.once('bound', resolve);
    client.once('error', reject);
  });
  const established = new Promise((resolve, reject) => {
    client.once('established', resolve);
    client.once('error', reject);
  });
  established.catch(() => {});
  client.connect();
  let control;
  let peer;
  try {
    const b = await withTimeout(bound, IO_TIMEOUT_MS, "BIND first reply ('bound')");
    control = b.socket;
    const ann = b.remoteHost;
    // the library turns an announced 0.0.0.0 into proxy.ipaddress, which we leave unset
    check(ann && typeof ann.host === 'string' && ann.host !== '0.0.0.0',
      `BIND announced an unusable address ${JSON.stringify(ann)} (0.0.0.0?)`);
    check(ann.port > 0, `BIND announced port ${ann.port}`);

    if (wrongPeerLocalAddress) {
      let establishedEarly = false;
      established.then(() => { establishedEarly = true; }, () => {});
      const wrong = net.connect({ host: ann.host, port: ann.port, localAddress: wrongPeerLocalAddress });
      wrong.on('error', () => {});
      wrong.on('data', () => {});
      await withTimeout(new Promise((res) => wrong.once('close', res)), 5000,
        `connection from the wrong peer ${wrongPeerLocalAddress} was not closed`);
      check(!establishedEarly, `second reply sent for a peer from ${wrongPeerLocalAddress}, not ${dst.host}`);
    }

    // The "remote host" connects to the announced address from a local TCP socket.
    peer = net.connect({ host: ann.host, port: ann.port, localAddress: peerLocalAddress });
    peer.on('error', () => {});
    await withTimeout(new Promise((res, rej) => { peer.once('connect', res); peer.once('error', rej); }),
      IO_TIMEOUT_MS, `connecting to the announced address ${ann.host}:${ann.port}`);

    const e = await withTimeout(established, IO_TIMEOUT_MS, "BIND second reply ('established')");
    const tunnel = e.socket;
    control = tunnel;
    const rh = e.remoteHost;
    check(rh && canon(rh.host) === canon(peer.localAddress) && rh.port === peer.localPort,
      `second reply names ${JSON.stringify(rh)}, want the peer ${peer.localAddress}:${peer.localPort}`);

    // bytes both ways
    const toPeer = crypto.randomBytes(300 * 1024);
    const toClient = crypto.randomBytes(200 * 1024);
    const atPeer = readExactly(peer, toPeer.length, 'BIND client->peer');
    const atClient = readExactly(tunnel, toClient.length, 'BIND peer->client');
    tunnel.write(toPeer);
    peer.write(toClient);
    const [gp, gc] = await Promise.all([atPeer, atClient]);
    check(sha(gp) === sha(toPeer), 'bytes from client to peer differ');
    check(sha(gc) === sha(toClient), 'bytes from peer to client differ');
  } finally {
    if (peer) peer.destroy();
    if (control) control.destroy();
    client.removeAllListeners();
  }
}

// Opens an association from a UDP socket bound to 127.0.0.1 (or ::1 over the
// proxy's [::1] listener when v6); returns {relay, control, sock}.
async function associate(proxy, v6 = false) {
  const local = v6 ? '::1' : '127.0.0.1';
  const [phost, pport] = v6 ? proxy.v6 : proxy.v4;
  const sock = dgram.createSocket(v6 ? 'udp6' : 'udp4');
  await new Promise((res) => sock.bind(0, local, res));
  cleanups.push(() => new Promise((r) => { try { sock.close(() => r()); } catch (_) { r(); } }));
  // createConnection() accepts only 'connect'; associate goes through the class.
  const client = new SocksClient({
    proxy: { host: phost, port: pport, type: 5 },
    command: 'associate',
    // announce the address we will send from (the server filters on it)
    destination: { host: local, port: sock.address().port },
    timeout: IO_TIMEOUT_MS,
  });
  const est = new Promise((resolve, reject) => {
    client.once('established', resolve);
    client.once('error', reject);
  });
  client.connect();
  const info = await withTimeout(est, IO_TIMEOUT_MS, 'UDP ASSOCIATE reply');
  client.removeAllListeners();
  const relay = info.remoteHost;
  check(relay && typeof relay.host === 'string' && relay.host !== '0.0.0.0' && relay.port > 0,
    `UDP ASSOCIATE announced an unusable relay ${JSON.stringify(relay)}`);
  check(canon(relay.host) === local,
    `UDP ASSOCIATE announced ${relay.host}, want the address the client reached the server at (${local})`);
  info.socket.on('error', () => {});
  return { relay, control: info.socket, sock };
}

// Send one frame to `dest` via the relay; wait for the echo; return the parsed frame (or null).
function udpOnce(a, dest, payload, waitMs) {
  return new Promise((resolve) => {
    const frame = SocksClient.createUDPFrame({ remoteHost: { host: dest.host, port: dest.port }, data: payload });
    const want = Buffer.concat([dest.tag, payload]);
    let timer;
    const onMsg = (msg, rinfo) => {
      let parsed;
      try { parsed = SocksClient.parseUDPFrame(msg); } catch (e) { return; }
      if (!parsed.data.equals(want)) return; // a late duplicate of an earlier datagram
      clearTimeout(timer);
      a.sock.off('message', onMsg);
      resolve({ parsed, rinfo });
    };
    a.sock.on('message', onMsg);
    timer = setTimeout(() => { a.sock.off('message', onMsg); resolve(null); }, waitMs);
    a.sock.send(frame, a.relay.port, a.relay.host);
  });
}

async function udpExchange(a, dests, rounds = 3) {
  for (let r = 0; r < rounds; r++) {
    for (const [i, d] of dests.entries()) {
      const payload = Buffer.concat([Buffer.from(`round ${r} dest ${i} `), crypto.randomBytes(50 + 300 * i)]);
      let got = null;
      for (let t = 0; t < UDP_TRIES && !got; t++) got = await udpOnce(a, d, payload, UDP_WAIT_MS);
      check(got, `no echo through the relay for a datagram to ${d.host}:${d.port}`);
      const src = got.parsed.remoteHost;
      check(canon(src.host) === canon(d.host) && src.port === d.port,
        `reply header names ${src.host}:${src.port}, want the echo server ${d.host}:${d.port}`);
      check(got.parsed.frameNumber === 0, `reply FRAG ${got.parsed.frameNumber}, want 0`);
      check(canon(got.rinfo.address) === canon(a.relay.host) && got.rinfo.port === a.relay.port,
        `reply came from ${got.rinfo.address}:${got.rinfo.port}, not the relay ${a.relay.host}:${a.relay.port}`);
    }
  }
}

async function main() {
  const kind = process.env.PROXY_KIND || 'ferrosocks';
  let proxy;
  try {
    proxy = await startProxy(['--ipv6']);
  } catch (e) {
    console.log(`FAIL npm-socks-setup: ${e.message}`);
    return 1;
  }
  const caps = proxy.caps;
  const echo4 = await tcpEcho('127.0.0.1');
  const echo6 = await tcpEcho('::1');
  const u4a = await udpEcho('127.0.0.1', '[a]');
  const u4b = await udpEcho('127.0.0.1', '[b]');
  const u6 = await udpEcho('::1', '[6]');

  await runCase('npm-socks-connect-ipv4', ['connect'], caps, kind,
    () => connectRoundtrip(proxy, '127.0.0.1', echo4.address().port));
  await runCase('npm-socks-connect-ipv6-target', ['connect'], caps, kind,
    () => connectRoundtrip(proxy, '::1', echo6.address().port));
  await runCase('npm-socks-connect-domain-localhost', ['connect'], caps, kind,
    () => connectRoundtrip(proxy, 'localhost', echo4.address().port));

  await runCase('npm-socks-bind-any-peer', ['bind'], caps, kind,
    () => bindExchange(proxy, { host: '0.0.0.0', port: 0 }, '127.0.0.1'));
  await runCase('npm-socks-bind-expected-peer', ['bind'], caps, kind,
    () => bindExchange(proxy, { host: '127.0.0.1', port: 0 }, '127.0.0.1'));

  await runCase('npm-socks-bind-refuses-other-peer', ['bind', 'bind-peer-filter'], caps, kind,
    () => bindExchange(proxy, { host: '127.0.0.2', port: 0 }, '127.0.0.2', '127.0.0.1'));

  await runCase('npm-socks-associate-two-ipv4-destinations', ['udp'], caps, kind, async () => {
    const a = await associate(proxy);
    try {
      await udpExchange(a, [u4a, u4b]);
    } finally {
      a.control.destroy();
    }
  });
  await runCase('npm-socks-associate-ipv6-destination', ['udp'], caps, kind, async () => {
    const a = await associate(proxy);
    try {
      await udpExchange(a, [u6, u4a]);
    } finally {
      a.control.destroy();
    }
  });
  await runCase('npm-socks-associate-over-ipv6-listener', ['udp', 'ipv6-listen'], caps, kind, async () => {
    const a = await associate(proxy, true);
    try {
      await udpExchange(a, [u6, u4a]);
    } finally {
      a.control.destroy();
    }
  });
  await runCase('npm-socks-associate-drops-datagrams-from-other-port', ['udp'], caps, kind, async () => {
    // The association announced our socket's port; a datagram to the relay from
    // another local port must not be relayed (and its echo must not come back).
    const a = await associate(proxy);
    const other = dgram.createSocket('udp4');
    await new Promise((res) => other.bind(0, '127.0.0.1', res));
    cleanups.push(() => new Promise((r) => { try { other.close(() => r()); } catch (_) { r(); } }));
    try {
      await udpExchange(a, [u4a], 1);
      const stray = [];
      other.on('message', (m) => stray.push(m));
      const seen = [];
      const onEcho = (m, rinfo) => seen.push(rinfo);
      u4b.sock.on('message', onEcho);
      const frame = SocksClient.createUDPFrame({ remoteHost: { host: u4b.host, port: u4b.port },
        data: Buffer.from('from a foreign port') });
      for (let i = 0; i < 3; i++) other.send(frame, a.relay.port, a.relay.host);
      await new Promise((r) => setTimeout(r, 1500));
      u4b.sock.off('message', onEcho);
      check(seen.length === 0, `echo server got ${seen.length} datagram(s) sent from a port the client did not announce`);
      check(stray.length === 0, 'a reply came back to the foreign port');
      await udpExchange(a, [u4a], 1); // the association still works for its own socket
    } finally {
      a.control.destroy();
    }
  });
  await runCase('npm-socks-associate-ends-with-tcp-connection', ['udp'], caps, kind, async () => {
    const a = await associate(proxy);
    await udpExchange(a, [u4a], 1); // works while the control connection is open
    a.control.destroy();
    await new Promise((r) => setTimeout(r, 700));
    const payload = Buffer.from('after close ' + crypto.randomBytes(8).toString('hex'));
    const got = await udpOnce(a, u4a, payload, 1500);
    check(got === null, 'datagram still relayed after the TCP control connection closed');
  });

  return failures ? 1 : 0;
}

async function cleanup() {
  for (const c of cleanups.reverse()) {
    try { await withTimeout(c(), 25000, 'cleanup'); } catch (_) { /* keep going */ }
  }
}

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => { cleanup().finally(() => process.exit(128 + 15)); });
}

main()
  .then(async (rc) => { await cleanup(); process.exit(rc); })
  .catch(async (e) => {
    console.log(`FAIL npm-socks: ${e && e.stack ? e.stack.replace(/\s+/g, ' ') : e}`);
    await cleanup();
    process.exit(1);
  });
