// The official OpenAI SDK against blockserve's gateway: models, completions, chat, streaming,
// errors, and a client that aborts its stream.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startServer, KEYS, referenceCases, haveModels } from './harness.mjs';

const skip = !haveModels() && 'real models not found (../shared/models)';
let server;
const client = (key = KEYS.acme) =>
  new OpenAI({ baseURL: `${server.base}/v1`, apiKey: key, maxRetries: 0 });

before(async () => { if (!skip) server = await startServer(); });
after(async () => {
  if (!server) return;
  const { code } = await server.stop();
  assert.equal(code, 0, 'SIGTERM drains and exits 0');
});

test('models list every model with its parent', { skip }, async () => {
  const ids = new Map();
  for await (const m of client().models.list()) ids.set(m.id, m);
  assert.deepEqual([...ids.keys()].sort(), ['ft1', 'lora4', 'stories260K']);
  assert.equal(ids.get('ft1').parent, 'stories260K');
  assert.equal(ids.get('lora4').adapter, true);
  const beta = [];
  for await (const m of client(KEYS.beta).models.list()) beta.push(m.id);
  assert.deepEqual(beta, ['stories260K']);
  const one = await client().models.retrieve('ft1');
  assert.equal(one.id, 'ft1');
});

test('greedy completions equal the llama2.c reference', { skip }, async () => {
  for (const c of referenceCases()) {
    const r = await client().completions.create({
      model: 'stories260K', prompt: c.prompt, max_tokens: c.generated.length, temperature: 0 });
    assert.equal(r.choices[0].text, c.text);
    assert.equal(r.choices[0].finish_reason, 'length');
    assert.equal(r.usage.completion_tokens, c.generated.length);
    assert.equal(r.usage.prompt_tokens, c.promptIds.length);
  }
});

test('chat completion and streamed chat give the reference text', { skip }, async () => {
  const c = referenceCases()[0];
  const r = await client().chat.completions.create({
    model: 'stories260K', messages: [{ role: 'user', content: c.prompt }],
    max_tokens: c.generated.length });
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(r.choices[0].message.content, c.text);
  const stream = await client().chat.completions.create({
    model: 'stories260K', messages: [{ role: 'user', content: c.prompt }],
    max_tokens: c.generated.length, stream: true, stream_options: { include_usage: true } });
  let text = '';
  let finish = null;
  let usage = null;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    if (chunk.choices.length) {
      text += chunk.choices[0].delta.content ?? '';
      finish = chunk.choices[0].finish_reason ?? finish;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.ok(chunks > 2);
  assert.equal(text, c.text);
  assert.equal(finish, 'length');
  assert.equal(usage.completion_tokens, c.generated.length);
});

test('streamed completion with stop strings, n and seed', { skip }, async () => {
  const c = referenceCases()[0];
  const stream = await client().completions.create({
    model: 'stories260K', prompt: c.prompt, max_tokens: 60, stop: ['Lily'], stream: true });
  let text = '';
  let finish = null;
  for await (const chunk of stream) {
    text += chunk.choices[0].text;
    finish = chunk.choices[0].finish_reason ?? finish;
  }
  assert.equal(text, c.text.slice(0, c.text.indexOf('Lily')));
  assert.equal(finish, 'stop');
  const req = { model: 'lora4', prompt: c.prompt, max_tokens: 16, temperature: 1, seed: 7, n: 2,
                user: 'e2e' };
  const a = await client().completions.create(req);
  const b = await client().completions.create(req);
  assert.equal(a.choices.length, 2);
  assert.deepEqual(a.choices.map((x) => x.text), b.choices.map((x) => x.text));
});

test('logprobs, logit_bias, penalties and echo through the SDK', { skip }, async () => {
  const c = referenceCases()[0];
  const r = await client().chat.completions.create({
    model: 'stories260K', messages: [{ role: 'user', content: c.prompt }], max_tokens: 6,
    temperature: 0, logprobs: true, top_logprobs: 3 });
  const content = r.choices[0].logprobs.content;
  assert.equal(content.length, 6);
  assert.equal(content.map((e) => e.token).join(''), r.choices[0].message.content);
  for (const e of content) {
    assert.equal(e.top_logprobs.length, 3);
    assert.equal(e.top_logprobs[0].token, e.token);  // greedy: the most likely
    assert.ok(e.logprob <= 0 && e.top_logprobs[2].logprob <= e.top_logprobs[1].logprob);
    assert.deepEqual(e.bytes, [...Buffer.from(e.token)]);
  }
  const done = await client().completions.create({
    model: 'stories260K', prompt: c.prompt, max_tokens: 6, temperature: 0, logprobs: 2 });
  assert.deepEqual(done.choices[0].logprobs.token_logprobs, content.map((e) => e.logprob));
  const biased = await client().completions.create({
    model: 'stories260K', prompt: c.prompt, max_tokens: 4, logit_bias: { 300: 100 },
    frequency_penalty: 0.5, presence_penalty: 0.5, logprobs: 0 });
  assert.equal(new Set(biased.choices[0].logprobs.tokens).size, 1);
  // echo with max_tokens 0 scores the prompt: its log-likelihood, as evaluation harnesses ask.
  const scored = await client().completions.create({
    model: 'stories260K', prompt: c.prompt, max_tokens: 0, echo: true, logprobs: 0 });
  assert.equal(scored.choices[0].text, c.prompt);
  assert.equal(scored.usage.completion_tokens, 0);
  const lps = scored.choices[0].logprobs.token_logprobs;
  assert.equal(lps.length, c.promptIds.length);
  assert.equal(lps[0], null);
  assert.ok(lps.slice(1).every((x) => x <= 0));
});

test('structured output: json_object and guided_choice through the SDK', { skip }, async () => {
  const r = await client().chat.completions.create({
    model: 'stories260K', messages: [{ role: 'user', content: 'Tell me about Lily.' }],
    max_tokens: 200, response_format: { type: 'json_object' } });
  const text = r.choices[0].message.content;
  assert.ok(text.startsWith('{'), text);
  if (r.choices[0].finish_reason === 'stop') assert.equal(typeof JSON.parse(text), 'object');
  const c = await client().completions.create({
    model: 'stories260K', prompt: 'Lily was very', max_tokens: 20, temperature: 1, seed: 3,
    guided_choice: ['happy', 'sad'] });
  assert.ok(['happy', 'sad'].includes(c.choices[0].text), c.choices[0].text);
  await assert.rejects(client().chat.completions.create({
    model: 'stories260K', messages: [{ role: 'user', content: 'x' }],
    response_format: { type: 'json_schema', json_schema: { name: 'x', schema: {} } } }),
  (e) => e instanceof OpenAI.BadRequestError && e.param === 'response_format');
});

test('errors come back as the SDK error classes with OpenAI codes', { skip }, async () => {
  await assert.rejects(client().completions.create({ model: 'nope', prompt: 'x' }),
                       (e) => e instanceof OpenAI.NotFoundError && e.code === 'model_not_found');
  await assert.rejects(client('sk-wrong-000000000').completions.create({ model: 'stories260K', prompt: 'x' }),
                       (e) => e instanceof OpenAI.AuthenticationError && e.status === 401);
  await assert.rejects(client(KEYS.beta).completions.create({ model: 'ft1', prompt: 'x' }),
                       (e) => e instanceof OpenAI.NotFoundError && e.status === 404);  // as a missing model
  await assert.rejects(client().completions.create({ model: 'stories260K', prompt: 'x', max_tokens: 0 }),
                       (e) => e instanceof OpenAI.BadRequestError && e.param === 'max_tokens');
  await assert.rejects(client().completions.create({ model: 'stories260K', prompt: 'x', max_tokens: 1e6 }),
                       (e) => e instanceof OpenAI.BadRequestError && e.code === 'context_length_exceeded');
  await client(KEYS.tiny).completions.create({ model: 'stories260K', prompt: 'x', max_tokens: 2 });
  await assert.rejects(client(KEYS.tiny).completions.create({ model: 'stories260K', prompt: 'x', max_tokens: 2 }),
                       (e) => e instanceof OpenAI.RateLimitError && e.status === 429);
});

test('aborting a stream aborts the request', { skip }, async () => {
  const metric = async () => {
    const text = await (await fetch(`${server.base}/metrics`,
                                    { headers: { Authorization: `Bearer ${KEYS.admin}` } })).text();
    const m = /blockserve_requests_total\{finish_reason="abort",model="stories260K",tenant="acme"\} (\S+)/.exec(text);
    return m ? Number(m[1]) : 0;
  };
  const before = await metric();
  const controller = new AbortController();
  const stream = await client().completions.create(
    { model: 'stories260K', prompt: 'Once', max_tokens: 400, stream: true },
    { signal: controller.signal });
  let got = 0;
  try {
    for await (const chunk of stream) {
      got += chunk.choices[0].text.length;
      if (got > 0) controller.abort();
    }
  } catch (e) {
    // the SDK may end the iteration or throw its abort error: either way the socket is gone
  }
  assert.ok(got > 0);
  let after = before;
  for (let i = 0; i < 100 && after === before; i++) {
    await new Promise((r) => setTimeout(r, 50));
    after = await metric();
  }
  assert.equal(after, before + 1);
});
