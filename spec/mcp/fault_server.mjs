#!/usr/bin/env node
// fault_server.mjs: a small MCP server over stdio for the faults the reference
// servers cannot produce (spec/mcp_spec.lua). Newline-delimited JSON-RPC on
// stdin/stdout, no dependencies.
//
// Options: --version V (answer initialize with protocol version V), --exit-at-once
// (exit 3 before reading anything), --banner (a line of garbage on stdout first),
// --page N (tools/list pages of N tools), --log FILE (every message received,
// one JSON line each, appended and flushed: specs synchronise on it),
// --stderr TEXT (a line to stderr at start), --long-tool (one more tool with a
// 39-character name and a 300-character description).
// Tools: echo, big {bytes}, garbage, unknown_id, slow {ms, text}, die, fail,
// rpc_error, hang, sample {prompt}, grow (adds tool "extra", sends list_changed),
// image, structured, resource, progress {steps}.
import fs from "node:fs";

const args = process.argv.slice(2);
const opt = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const has = (name) => args.includes(name);

if (has("--exit-at-once")) {
  process.stderr.write("fault_server: exiting at once as asked\n");
  process.exit(3);
}
if (opt("--stderr")) process.stderr.write(opt("--stderr") + "\n");

const logFile = opt("--log");
const log = (obj) => {
  if (logFile) fs.appendFileSync(logFile, JSON.stringify(obj) + "\n");
};
const send = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const raw = (s) => process.stdout.write(s);

if (has("--banner")) raw("fault_server starting (this line is not JSON-RPC)\n");

const obj = { type: "object", properties: {} };
const tools = [
  { name: "echo", description: "Echo the text back", inputSchema: { type: "object", properties: { text: { type: "string" } }, required: ["text"] } },
  { name: "big", description: "A text result of `bytes` bytes", inputSchema: { type: "object", properties: { bytes: { type: "integer" } } } },
  { name: "garbage", description: "Garbage on stdout, then the answer", inputSchema: obj },
  { name: "unknown_id", description: "A response for an unknown id, then the answer", inputSchema: obj },
  { name: "slow", description: "Answer after ms milliseconds", inputSchema: { type: "object", properties: { ms: { type: "integer" }, text: { type: "string" } } } },
  { name: "die", description: "Exit in the middle of the call", inputSchema: obj },
  { name: "fail", description: "An isError result", inputSchema: obj },
  { name: "rpc_error", description: "A JSON-RPC error", inputSchema: obj },
  { name: "hang", description: "Never answer", inputSchema: obj },
  { name: "sample", description: "Ask the client's model (sampling/createMessage)", inputSchema: { type: "object", properties: { prompt: { type: "string" } } } },
  { name: "grow", description: "Add the tool 'extra' and say the list changed", inputSchema: obj },
  { name: "image", description: "An image and an audio clip", inputSchema: obj },
  { name: "structured", description: "structuredContent only", inputSchema: obj },
  { name: "resource", description: "An embedded resource", inputSchema: obj },
  { name: "progress", description: "Progress notifications, then the answer", inputSchema: { type: "object", properties: { steps: { type: "integer" } } } },
];
if (args.includes("--long-tool")) {
  tools.push({ name: "a_tool_with_a_rather_long_name_of_40_ch", description: "Long. ".repeat(50).trim(), inputSchema: obj });
}
const pageSize = opt("--page") ? Number(opt("--page")) : 0;
const version = opt("--version");
let nextId = 1000;
const waiting = new Map(); // our request id -> the tools/call id to answer

const text = (id, t) => send({ jsonrpc: "2.0", id, result: { content: [{ type: "text", text: t }] } });

function callTool(id, name, a, meta) {
  switch (name) {
    case "echo": return text(id, String(a.text));
    case "big": return text(id, "x".repeat(Number(a.bytes || 10 * 1024 * 1024)));
    case "garbage":
      raw("this is not JSON\n");
      raw("{\"jsonrpc\": \"2.0\", \"id\": \n");
      raw("[1, 2, 3]\n");
      return text(id, "after garbage");
    case "unknown_id":
      send({ jsonrpc: "2.0", id: 987654, result: { content: [{ type: "text", text: "for nobody" }] } });
      send({ jsonrpc: "2.0", id: "not-ours", error: { code: -1, message: "for nobody either" } });
      return text(id, "after unknown id");
    case "slow": return setTimeout(() => text(id, String(a.text ?? "slow")), Number(a.ms || 100));
    case "die":
      process.stderr.write("fault_server: dying mid-call\n");
      return process.exit(7);
    case "fail": return send({ jsonrpc: "2.0", id, result: { isError: true, content: [{ type: "text", text: "the disk is full" }] } });
    case "rpc_error": return send({ jsonrpc: "2.0", id, error: { code: -32602, message: "Unknown tool arguments" } });
    case "hang": return;
    case "sample": {
      const rid = nextId++;
      waiting.set(rid, id);
      return send({ jsonrpc: "2.0", id: rid, method: "sampling/createMessage", params: {
        messages: [{ role: "user", content: { type: "text", text: String(a.prompt ?? "hello") } }],
        systemPrompt: "You are terse.", maxTokens: 50 } });
    }
    case "grow":
      if (!tools.find((t) => t.name === "extra")) tools.push({ name: "extra", description: "Added later", inputSchema: obj });
      send({ jsonrpc: "2.0", method: "notifications/tools/list_changed" });
      return text(id, "grown");
    case "extra": return text(id, "extra ran");
    case "image": return send({ jsonrpc: "2.0", id, result: { content: [
      { type: "image", mimeType: "image/png", data: Buffer.alloc(1234).toString("base64") },
      { type: "audio", mimeType: "audio/wav", data: Buffer.alloc(10).toString("base64") }] } });
    case "structured": return send({ jsonrpc: "2.0", id, result: { content: [], structuredContent: { b: 2, a: [1, "x"] } } });
    case "resource": return send({ jsonrpc: "2.0", id, result: { content: [
      { type: "resource", resource: { uri: "file:///a.txt", mimeType: "text/plain", text: "resource text" } },
      { type: "text", text: "and text" }] } });
    case "progress": {
      const steps = Number(a.steps || 3);
      const token = meta && meta.progressToken;
      for (let i = 1; i <= steps; i++) {
        if (token !== undefined) send({ jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: token, progress: i, total: steps, message: "step " + i } });
      }
      send({ jsonrpc: "2.0", method: "notifications/message", params: { level: "info", logger: "fault", data: "progress done" } });
      return text(id, "progressed");
    }
    default:
      return send({ jsonrpc: "2.0", id, error: { code: -32602, message: "Unknown tool: " + name } });
  }
}

function handle(msg) {
  log(msg);
  if (msg.id !== undefined && msg.method === undefined) {
    // The client's answer to our sampling request.
    const callId = waiting.get(msg.id);
    if (callId === undefined) return;
    waiting.delete(msg.id);
    if (msg.error) return send({ jsonrpc: "2.0", id: callId, result: { isError: true, content: [{ type: "text", text: "sampling refused: " + msg.error.message + " (" + msg.error.code + ")" }] } });
    return text(callId, "model said: " + msg.result.content.text);
  }
  const { id, method, params = {} } = msg;
  if (id === undefined) return; // notifications: logged only
  switch (method) {
    case "initialize":
      return send({ jsonrpc: "2.0", id, result: {
        protocolVersion: version ?? params.protocolVersion,
        capabilities: { tools: { listChanged: true }, logging: {} },
        serverInfo: { name: "fault-server", version: "1.0.0" } } });
    case "ping": return send({ jsonrpc: "2.0", id, result: {} });
    case "tools/list": {
      if (!pageSize) return send({ jsonrpc: "2.0", id, result: { tools } });
      const start = params.cursor ? Number(params.cursor) : 0;
      const page = tools.slice(start, start + pageSize);
      const result = { tools: page };
      if (start + pageSize < tools.length) result.nextCursor = String(start + pageSize);
      return send({ jsonrpc: "2.0", id, result });
    }
    case "tools/call": return callTool(id, params.name, params.arguments || {}, params._meta);
    default: return send({ jsonrpc: "2.0", id, error: { code: -32601, message: "Method not found: " + method } });
  }
}

let buf = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => {
  buf += chunk;
  let i;
  while ((i = buf.indexOf("\n")) >= 0) {
    const line = buf.slice(0, i);
    buf = buf.slice(i + 1);
    if (line.trim() === "") continue;
    let msg;
    try { msg = JSON.parse(line); } catch (e) { process.stderr.write("fault_server: bad JSON from the client\n"); continue; }
    handle(msg);
  }
});
process.stdin.on("end", () => {
  log({ event: "stdin closed" });
  process.exit(0);
});
