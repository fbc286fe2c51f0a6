// @grpc/grpc-js against blockserve's gRPC services: Generate (streaming) and Complete give the
// reference tokens; models; status codes; server reflection lists the services.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import { GrpcReflection } from 'grpc-js-reflection-client';
import { startServer, KEYS, referenceCases, haveModels, root } from './harness.mjs';

const skip = !haveModels() && 'real models not found (../shared/models)';
let server;
let api;

function meta(key = KEYS.acme) {
  const m = new grpc.Metadata();
  m.set('authorization', `Bearer ${key}`);
  return m;
}

before(async () => {
  if (skip) return;
  server = await startServer();
  const def = protoLoader.loadSync(join(root, 'proto', 'blockserve', 'v1', 'blockserve.proto'),
                                   { keepCase: true, longs: Number, defaults: true, oneofs: true });
  api = grpc.loadPackageDefinition(def).blockserve.v1;
});
after(async () => { if (server) await server.stop(); });

const gen = () => new api.Generation(`127.0.0.1:${server.grpc}`, grpc.credentials.createInsecure());

test('Generate streams the reference tokens; Complete answers once', { skip }, async () => {
  for (const c of referenceCases()) {
    const call = gen().Generate({ model: 'stories260K', text: c.prompt, max_tokens: c.generated.length }, meta());
    const tokens = [];
    let text = '';
    let last;
    for await (const msg of call) {
      tokens.push(...msg.token_ids);
      text += msg.text;
      last = msg;
    }
    assert.deepEqual(tokens, c.generated);
    assert.equal(text, c.text);
    assert.equal(last.finish_reason, 'length');
    assert.equal(last.usage.completion_tokens, c.generated.length);
  }
  const c = referenceCases()[0];
  const resp = await new Promise((res, rej) => gen().Complete(
    { model: 'stories260K', token_ids: { ids: c.promptIds }, max_tokens: c.generated.length },
    meta(), (e, r) => (e ? rej(e) : res(r))));
  assert.deepEqual(resp.token_ids, c.generated);
});

test('ListModels, GetModel and status codes', { skip }, async () => {
  const call = (method, req, key) => new Promise((res, rej) =>
    gen()[method](req, meta(key), (e, r) => (e ? rej(e) : res(r))));
  const list = await call('ListModels', {}, KEYS.acme);
  assert.deepEqual(list.models.map((m) => m.name).sort(), ['ft1', 'lora4', 'stories260K']);
  const m = await call('GetModel', { name: 'ft1' }, KEYS.acme);
  assert.equal(m.parent, 'stories260K');
  await assert.rejects(call('GetModel', { name: 'nope' }, KEYS.acme), (e) => e.code === grpc.status.NOT_FOUND);
  await assert.rejects(call('Complete', { model: 'stories260K', text: 'x' }, 'sk-bad-00000000'),
                       (e) => e.code === grpc.status.UNAUTHENTICATED);
  await assert.rejects(call('Complete', { model: 'ft1', text: 'x' }, KEYS.beta),
                       (e) => e.code === grpc.status.NOT_FOUND);  // as a missing model
  await assert.rejects(call('Complete', { model: 'stories260K', text: 'x', max_tokens: 100000 }, KEYS.acme),
                       (e) => e.code === grpc.status.INVALID_ARGUMENT);
});

test('server reflection (asked for in the config) lists the services', { skip }, async () => {
  const r = new GrpcReflection(`127.0.0.1:${server.grpc}`, grpc.credentials.createInsecure());
  const services = await r.listServices();
  for (const s of ['blockserve.v1.Generation', 'blockserve.v1.Admin', 'grpc.health.v1.Health']) {
    assert.ok(services.includes(s), `${s} in ${services}`);
  }
});
