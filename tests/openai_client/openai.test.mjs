// The official openai SDK against a running gritserve (GRITSERVE_URL, e.g.
// http://127.0.0.1:8080): what real clients send must work, and the OpenAI
// routes must agree with the native /embed and /generate routes.
// Run: GRITSERVE_URL=... node --test tests/openai_client/
import assert from 'node:assert/strict';
import { test } from 'node:test';

import OpenAI from 'openai';

const BASE = process.env.GRITSERVE_URL;
if (!BASE) {
  // A missing URL is a broken harness, not a reason to skip.
  throw new Error('GRITSERVE_URL is not set (e.g. http://127.0.0.1:8080)');
}

// No retries: a refused request should fail the test at once, not be hidden.
const client = new OpenAI({
  baseURL: `${BASE}/v1`,
  apiKey: process.env.GRITSERVE_API_KEY ?? 'unused',
  maxRetries: 0,
  timeout: 60_000,
});

const MODEL = 'gritserve';
const MAX_TOKENS = 12;

async function post(path, body) {
  const res = await fetch(`${BASE}${path}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  assert.equal(res.status, 200, `${path}: ${text}`);
  return JSON.parse(text);
}

function assertClose(actual, expected, what) {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < expected.length; ++i) {
    assert.ok(Math.abs(actual[i] - expected[i]) <= 1e-6,
      `${what}[${i}]: ${actual[i]} vs ${expected[i]}`);
  }
}

// Base64 little-endian float32, as the OpenAI API sends it.
function decodeBase64(s) {
  const bytes = Buffer.from(s, 'base64');
  return Array.from(new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4));
}

function assertUsage(usage, what) {
  assert.ok(usage, `${what}: usage missing`);
  assert.ok(Number.isInteger(usage.prompt_tokens) && usage.prompt_tokens > 0,
    `${what}: prompt_tokens ${usage.prompt_tokens}`);
  assert.ok(Number.isInteger(usage.completion_tokens) && usage.completion_tokens > 0,
    `${what}: completion_tokens ${usage.completion_tokens}`);
  assert.ok(usage.completion_tokens <= MAX_TOKENS, `${what}: more tokens than max_tokens`);
  assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens,
    `${what}: total_tokens`);
}

test('embeddings: float, SDK default (base64) and explicit base64 equal /embed', async () => {
  const input = ['the quick brown fox', 'jumps over the lazy dog'];
  const native = await post('/embed', { inputs: input });
  assert.equal(native.length, input.length);

  const asFloat = await client.embeddings.create({ model: MODEL, input, encoding_format: 'float' });
  // Without encoding_format the SDK asks for base64 and decodes it itself.
  const byDefault = await client.embeddings.create({ model: MODEL, input });
  // An explicit base64 request is returned undecoded.
  const asBase64 = await client.embeddings.create({ model: MODEL, input, encoding_format: 'base64' });

  for (const [name, res] of [['float', asFloat], ['default', byDefault], ['base64', asBase64]]) {
    assert.equal(res.object, 'list', name);
    assert.equal(res.data.length, input.length, name);
    assert.ok(Number.isInteger(res.usage.prompt_tokens) && res.usage.prompt_tokens > 0, name);
    assert.equal(res.usage.total_tokens, res.usage.prompt_tokens, name);
    res.data.forEach((d, i) => {
      assert.equal(d.object, 'embedding', name);
      assert.equal(d.index, i, name);
      const vec = typeof d.embedding === 'string' ? decodeBase64(d.embedding) : Array.from(d.embedding);
      assertClose(vec, native[i], `${name} input ${i}`);
    });
  }
  assert.equal(typeof asBase64.data[0].embedding, 'string');
  assert.equal(asFloat.usage.prompt_tokens, byDefault.usage.prompt_tokens);
});

test('completions: streamed == non-streamed == /generate raw', async () => {
  const prompt = 'Once upon a time';
  const params = { model: MODEL, prompt, max_tokens: MAX_TOKENS, temperature: 0 };

  const full = await client.completions.create(params);
  assert.equal(full.object, 'text_completion');
  assert.equal(full.choices.length, 1);
  assert.ok(['stop', 'length'].includes(full.choices[0].finish_reason));
  assertUsage(full.usage, 'completions');

  let streamed = '';
  let finish = null;
  let streamUsage = null;
  const stream = await client.completions.create({
    ...params, stream: true, stream_options: { include_usage: true },
  });
  for await (const chunk of stream) {
    if (chunk.usage) streamUsage = chunk.usage;
    for (const choice of chunk.choices) {
      streamed += choice.text;
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  assert.equal(streamed, full.choices[0].text);
  assert.equal(finish, full.choices[0].finish_reason);
  assert.deepEqual(streamUsage, full.usage);

  const native = await post('/generate', { prompt, raw: true, max_tokens: MAX_TOKENS, temperature: 0 });
  assert.equal(full.choices[0].text, native.text);
  assert.equal(full.usage.prompt_tokens, native.usage.prompt_tokens);
  assert.equal(full.usage.completion_tokens, native.usage.completion_tokens);
});

test('chat completions: streamed == non-streamed == /generate messages', async () => {
  const messages = [
    { role: 'system', content: 'You are terse.' },
    { role: 'user', content: 'Name a colour.' },
  ];
  const params = { model: MODEL, messages, max_tokens: MAX_TOKENS, temperature: 0 };

  const full = await client.chat.completions.create(params);
  assert.equal(full.object, 'chat.completion');
  assert.equal(full.choices.length, 1);
  assert.equal(full.choices[0].message.role, 'assistant');
  assert.ok(['stop', 'length'].includes(full.choices[0].finish_reason));
  assertUsage(full.usage, 'chat');

  let streamed = '';
  let role = null;
  let finish = null;
  let streamUsage = null;
  const stream = await client.chat.completions.create({
    ...params, stream: true, stream_options: { include_usage: true },
  });
  for await (const chunk of stream) {
    assert.equal(chunk.object, 'chat.completion.chunk');
    if (chunk.usage) streamUsage = chunk.usage;
    for (const choice of chunk.choices) {
      if (choice.delta.role) role = choice.delta.role;
      streamed += choice.delta.content ?? '';
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  assert.equal(role, 'assistant');
  assert.equal(streamed, full.choices[0].message.content);
  assert.equal(finish, full.choices[0].finish_reason);
  assert.deepEqual(streamUsage, full.usage);

  const native = await post('/generate', { messages, max_tokens: MAX_TOKENS, temperature: 0 });
  assert.equal(full.choices[0].message.content, native.text);
  assert.equal(full.usage.prompt_tokens, native.usage.prompt_tokens);
  assert.equal(full.usage.completion_tokens, native.usage.completion_tokens);
});

test('models: the served model is listed', async () => {
  const models = [];
  for await (const m of client.models.list()) models.push(m);
  assert.equal(models.length, 1);
  assert.equal(models[0].object, 'model');
  assert.ok(models[0].id.length > 0);
});
