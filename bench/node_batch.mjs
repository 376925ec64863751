// bench/node_batch.mjs: the node contender of the batch workload in `make bench`:
// the official openai SDK (bench/package.json) running a requests file in the
// OpenAI Batch input format at the same concurrency as `luachat batch`:
// CONCURRENCY workers pulling lines from a streamed read of the file,
// chat.completions.create for each body, one output line written (synchronously,
// like luachat's flushed lines) per answer.
// Never: times itself (the harness measures the whole process with wait4).
//
// Usage: node bench/node_batch.mjs IN.jsonl OUT.jsonl BASE_URL CONCURRENCY
// Prints {"requests": N, "ok": N}.
import fs from 'node:fs';
import readline from 'node:readline';
import OpenAI from 'openai';

const [input, output, baseURL, concArg] = process.argv.slice(2);
const concurrency = Number(concArg || 64);
const client = new OpenAI({ apiKey: 'sk-bench', baseURL, maxRetries: 0 });
const fd = fs.openSync(output, 'w');
const lines = readline.createInterface({ input: fs.createReadStream(input), crlfDelay: Infinity })[Symbol.asyncIterator]();

// One line at a time for every worker (the iterator is not meant for concurrent next()).
let queue = Promise.resolve();
function nextLine() {
  const p = queue.then(() => lines.next());
  queue = p.catch(() => {});
  return p;
}

let requests = 0;
let ok = 0;
let seq = 0;

async function worker() {
  for (;;) {
    const { value, done } = await nextLine();
    if (done) return;
    if (!value.trim()) continue;
    const req = JSON.parse(value);
    let line;
    try {
      const res = await client.chat.completions.create(req.body);
      ok += 1;
      line = { id: `batch_req_${++seq}`, custom_id: req.custom_id, response: { status_code: 200, body: res }, error: null };
    } catch (err) {
      line = { id: `batch_req_${++seq}`, custom_id: req.custom_id, response: null, error: { code: 'error', message: String(err) } };
    }
    requests += 1;
    fs.writeSync(fd, JSON.stringify(line) + '\n');
  }
}

const workers = [];
for (let i = 0; i < concurrency; i++) workers.push(worker());
await Promise.all(workers);
fs.closeSync(fd);
console.log(JSON.stringify({ requests, ok }));
