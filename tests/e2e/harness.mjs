// Starts a real `blockserve serve` on loopback over a fresh zoo (stories260K from ../shared, a
// derived partial fine-tune and a LoRA model) with tenants, for the outside-client tests.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const root = join(here, '..', '..');
export const build = process.env.BLOCKSERVE_BUILD_DIR || join(root, 'build');
export const modelsDir = process.env.BLOCKSERVE_MODELS_DIR || join(root, '..', 'shared', 'models');

export const KEYS = {
  acme: 'sk-acme-0123456789',
  beta: 'sk-beta-0123456789',
  tiny: 'sk-tiny-0123456789',
  admin: 'sk-admin-0123456789',
};

export function haveModels() {
  return existsSync(join(modelsDir, 'stories260K', 'stories260K.bin'));
}

// The greedy reference cases with a prompt: {prompt, promptIds, generated, text}.
export function referenceCases() {
  const ref = JSON.parse(readFileSync(join(modelsDir, 'stories260K', 'reference.json'), 'utf8'));
  const out = [];
  for (const c of ref.cases) {
    const m = /-i "([^"]*)"/.exec(c.command);
    if (!m || !c.command.includes('-t 0.0')) continue;
    const prompt = m[1];
    out.push({ prompt, promptIds: c.prompt_ids, generated: c.generated_ids,
               text: c.stdout.slice(prompt.length, -1) });
  }
  return out;
}

export async function startServer() {
  const dir = mkdtempSync(join(tmpdir(), 'blockserve-e2e-'));
  const zoo = join(dir, 'zoo');
  const bz = (...args) => execFileSync(join(build, 'bin', 'blockzoo'), args, { stdio: 'pipe' });
  bz('import', '--zoo', zoo, join(modelsDir, 'stories260K', 'stories260K.bin'));
  bz('derive', '--zoo', zoo, '--from', 'stories260K', '--name', 'ft1', '--recipe', 'partial',
     '--layers', '2', '--seed', '1');
  bz('derive', '--zoo', zoo, '--from', 'stories260K', '--name', 'lora4', '--recipe', 'lora',
     '--lora_rank', '4', '--seed', '4');
  const config = {
    engine: { threads: 2 },
    gateway: { grpc_reflection: true },  // off by default once tenants are configured
    admin_keys: [KEYS.admin],
    tenants: [
      { name: 'acme', api_keys: [KEYS.acme] },
      { name: 'beta', api_keys: [KEYS.beta], models: ['stories260K'] },
      { name: 'tiny', api_keys: [KEYS.tiny], requests_per_second: 0.1 },
    ],
  };
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
  // BLOCKSERVE_E2E_WORKERS=N: the block instances live on N `blockserve worker` processes.
  const workers = [];
  const workerArgs = [];
  for (let i = 0; i < Number(process.env.BLOCKSERVE_E2E_WORKERS || 0); i++) {
    const w = spawn(join(build, 'bin', 'blockserve'),
                    ['worker', '--zoo', zoo, '--listen', '127.0.0.1:0', '--threads', '1'],
                    { stdio: ['ignore', 'pipe', 'pipe'] });
    workers.push(w);
    const port = await new Promise((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new Error('worker did not start')), 30000);
      w.stdout.on('data', (d) => {
        out += d;
        const m = /listening port=(\d+)/.exec(out);
        if (m) { clearTimeout(timer); resolve(Number(m[1])); }
      });
      w.on('exit', (code) => reject(new Error(`worker exited ${code}`)));
    });
    workerArgs.push(`127.0.0.1:${port}`);
  }
  const serveArgs = ['serve', '--zoo', zoo, '--http_port', '0', '--grpc_port', '0',
                     '--config', join(dir, 'config.json')];
  if (workerArgs.length > 0) serveArgs.push('--workers', workerArgs.join(','));
  const proc = spawn(join(build, 'bin', 'blockserve'), serveArgs,
                     { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (d) => { stderr += d; });
  const ports = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error('server did not start: ' + stderr)), 30000);
    proc.stdout.on('data', (d) => {
      out += d;
      const m = /listening http=[^:]+:(\d+) grpc=[^:]+:(\d+)/.exec(out);
      if (m) { clearTimeout(timer); resolve({ http: Number(m[1]), grpc: Number(m[2]) }); }
    });
    proc.on('exit', (code) => reject(new Error(`server exited ${code}: ${stderr}`)));
  });
  return {
    ...ports,
    base: `http://127.0.0.1:${ports.http}`,
    async stop() {
      const exited = new Promise((r) => proc.on('exit', (code, sig) => r({ code, sig })));
      proc.kill('SIGTERM');
      const res = await exited;
      for (const w of workers) w.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
      return res;
    },
    stderr: () => stderr,
  };
}
