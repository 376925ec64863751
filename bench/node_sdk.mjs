// bench/node_sdk.mjs: the Node contender of `make bench`: the official `openai`
// npm package (pinned in bench/package.json) against the local test server.
//
// Owns: one workload per process, with `chat.completions.create({stream:true})`
// (FORM=create) or the `chat.completions.stream()` helper (FORM=helper),
// counting chunks and content bytes, printing one JSON line for
// scripts/bench/run.py to check.
// Never: times itself (the harness measures the whole process with wait4).
//
// Usage: node bench/node_sdk.mjs WORKLOAD FORM BASE_URL N [M]
//   stream_text|stream_tool  one stream          concurrent  N streams at once
//   nonstream                N requests in turn  agent       N runs of M turns (runTools)
//   startup                  import, construct a client, exit
import OpenAI from 'openai';

const [workload, form, baseURL, nArg, mArg] = process.argv.slice(2);
const n = Number(nArg || 1);
const m = Number(mArg || 1);

const client = new OpenAI({ apiKey: 'sk-bench', baseURL, maxRetries: 0 });
const request = {
  model: 'bench',
  messages: [{ role: 'user', content: 'Tell me a long story.' }],
  stream_options: { include_usage: true },
};

let chunks = 0;
let contentBytes = 0;
let requests = 0;
let toolCalls = 0;

// Content is ASCII in every workload, so string length is the byte count.
function count(chunk) {
  chunks += 1;
  const choice = chunk.choices[0];
  if (!choice) return;
  const delta = choice.delta;
  if (typeof delta.content === 'string') contentBytes += delta.content.length;
  if (delta.tool_calls) {
    for (const call of delta.tool_calls) {
      const args = call.function && call.function.arguments;
      if (typeof args === 'string') contentBytes += args.length;
    }
  }
}

async function oneStream() {
  requests += 1;
  if (form === 'helper') {
    const runner = client.chat.completions.stream(request);
    for await (const chunk of runner) count(chunk);
    await runner.finalChatCompletion();
  } else {
    const stream = await client.chat.completions.create({ ...request, stream: true });
    for await (const chunk of stream) count(chunk);
  }
}

async function main() {
  switch (workload) {
    case 'startup':
      break;
    case 'stream_text':
    case 'stream_tool':
      await oneStream();
      break;
    case 'nonstream': {
      const req = { model: 'bench', messages: request.messages };
      for (let i = 0; i < n; i++) {
        const res = await client.chat.completions.create(req);
        requests += 1;
        contentBytes += res.choices[0].message.content.length;
      }
      break;
    }
    case 'concurrent': {
      const all = [];
      for (let i = 0; i < n; i++) all.push(oneStream());
      await Promise.all(all);
      break;
    }
    case 'agent': {
      const tools = [{
        type: 'function',
        function: {
          name: 'search',
          description: 'Search the notes.',
          parameters: { type: 'object', properties: { q: { type: 'string' } }, required: ['q'] },
          parse: JSON.parse,
          function: (args) => {
            toolCalls += 1;
            return { hits: 1, first: args.q };
          },
        },
      }];
      for (let i = 0; i < n; i++) {
        // The server always answers with a tool call: each run stops at maxChatCompletions.
        const runner = client.chat.completions.runTools({
          model: 'bench', messages: [{ role: 'user', content: 'Look this up.' }], tools,
        }, { maxChatCompletions: m });
        await runner.done();
        requests += runner.allChatCompletions().length;
      }
      break;
    }
    default:
      throw new Error(`unknown workload ${workload}`);
  }
  if (workload === 'startup') {
    console.log('{"ok":true}');
  } else {
    console.log(JSON.stringify({
      chunks, content_bytes: contentBytes, requests, tool_calls: toolCalls,
    }));
  }
}

main().catch((err) => {
  console.error(`node_sdk: ${err && err.stack ? err.stack : err}`);
  process.exit(1);
});
