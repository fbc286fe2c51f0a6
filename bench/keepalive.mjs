// Short completions through the official openai SDK (which keeps its connections alive) next
// to the same requests each on a fresh connection, interleaved rounds, medians: per-request
// latency on a kept-alive connection must not exceed a fresh connection's (it was 47.7 ms vs
// 2.2 ms before the gateway set TCP_NODELAY; issue 16).
//   node bench/keepalive.mjs PORT [rounds=5] [requests per round=50]
import http from 'node:http';
import OpenAI from 'openai';

const [port, rounds = 5, n = 50] = process.argv.slice(2).map(Number);
if (!port) {
  console.error('usage: node bench/keepalive.mjs PORT [rounds] [requests]');
  process.exit(2);
}
const body = JSON.stringify({ model: 'stories260K', prompt: 'Tom', max_tokens: 1 });
const client = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: process.env.KEY ?? 'x', maxRetries: 0 });
const fresh = () => new Promise((resolve, reject) => {
  const req = http.request({ port, host: '127.0.0.1', path: '/v1/completions', method: 'POST', agent: false,
                             headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${process.env.KEY ?? 'x'}` } },
                           (res) => { res.resume(); res.on('end', resolve); });
  req.on('error', reject);
  req.end(body);
});
const median = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
const kept = [], fresh_ms = [];
for (let r = 0; r < rounds; r++) {
  let t0 = performance.now();
  for (let i = 0; i < n; i++) await client.completions.create(JSON.parse(body));
  kept.push((performance.now() - t0) / n);
  t0 = performance.now();
  for (let i = 0; i < n; i++) await fresh();
  fresh_ms.push((performance.now() - t0) / n);
}
console.log(`per short completion, median of ${rounds} interleaved rounds of ${n}:`);
console.log(`  openai SDK, kept-alive connection: ${median(kept).toFixed(2)} ms`);
console.log(`  a fresh connection each:           ${median(fresh_ms).toFixed(2)} ms`);
console.log(JSON.stringify({ keepalive_ms: median(kept), fresh_ms: median(fresh_ms) }));
