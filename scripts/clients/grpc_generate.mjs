// One streaming Generate call through @grpc/grpc-js (blockserve.v1.Generation).
//   node scripts/clients/grpc_generate.mjs HOST:PORT MODEL PROMPT [MAX_TOKENS]
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

const [address, model, prompt, maxTokens = '80'] = process.argv.slice(2);
const proto = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'proto', 'blockserve', 'v1', 'blockserve.proto');
const api = grpc.loadPackageDefinition(protoLoader.loadSync(proto, { keepCase: true, defaults: true, oneofs: true })).blockserve.v1;
const client = new api.Generation(address, grpc.credentials.createInsecure());
const meta = new grpc.Metadata();
if (process.env.BLOCKSERVE_API_KEY) meta.set('authorization', `Bearer ${process.env.BLOCKSERVE_API_KEY}`);
let text = '';
let messages = 0;
let last;
for await (const msg of client.Generate({ model, text: prompt, max_tokens: Number(maxTokens) }, meta)) {
  text += msg.text;
  messages++;
  last = msg;
}
console.log(`[grpc blockserve.v1.Generation/Generate ${model}] ${prompt}${text}`);
console.log(`  ${messages} streamed messages, finish_reason=${last.finish_reason} usage=${JSON.stringify(last.usage)}`);
client.close();
