// One chat completion through the official OpenAI SDK.
//   node scripts/clients/chat.mjs BASE_URL MODEL PROMPT [MAX_TOKENS]
import OpenAI from 'openai';

const [base, model, prompt, maxTokens = '80'] = process.argv.slice(2);
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: process.env.BLOCKSERVE_API_KEY ?? 'none', maxRetries: 0 });
const r = await client.chat.completions.create({
  model, messages: [{ role: 'user', content: prompt }], max_tokens: Number(maxTokens) });
console.log(`[openai chat.completions ${model}] ${prompt}${r.choices[0].message.content}`);
console.log(`  finish_reason=${r.choices[0].finish_reason} usage=${JSON.stringify(r.usage)}`);
