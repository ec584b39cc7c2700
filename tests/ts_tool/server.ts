// A tiny MCP tool server in TypeScript, on the official TypeScript SDK.
// The gateway tests start it (node dist/server.js PORT), register it with the
// gateway at run time and call its tools through the gateway from Python.
import { randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";

import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { z } from "zod";

function buildServer(): McpServer {
  const server = new McpServer({ name: "ts-tools", version: "1.0.0" });

  server.registerTool(
    "reverse",
    {
      description: "Reverse a text, character by character.",
      inputSchema: { text: z.string().describe("Text to reverse") },
      annotations: { readOnlyHint: true },
    },
    async ({ text }, extra) => {
      const reversed = [...text].reverse().join("");
      const hops = extra._meta?.["io.microhive/hops"] ?? null;
      return {
        content: [{ type: "text", text: reversed }],
        structuredContent: { reversed, hops, language: "typescript" },
      };
    },
  );

  server.registerTool(
    "word_count",
    {
      description: "Count the words of a text.",
      inputSchema: { text: z.string().describe("Text to count") },
      annotations: { readOnlyHint: true },
    },
    async ({ text }) => {
      const words = text.split(/\s+/).filter((w) => w.length > 0).length;
      return { content: [{ type: "text", text: String(words) }], structuredContent: { words } };
    },
  );
  // Registering a tool on a connected server makes the SDK send
  // notifications/tools/list_changed: the gateway must pick the new tool up.
  server.registerTool(
    "grow",
    { description: "Add a 'shout' tool to this server (announces a tool-list change).", inputSchema: {} },
    async () => {
      server.registerTool(
        "shout",
        {
          description: "Upper-case a text.",
          inputSchema: { text: z.string().describe("Text to shout") },
        },
        async ({ text }) => ({ content: [{ type: "text", text: text.toUpperCase() }] }),
      );
      return { content: [{ type: "text", text: "grown" }] };
    },
  );
  return server;
}

// One transport (and server) per MCP session, as the SDK's streamable HTTP transport expects.
const sessions = new Map<string, StreamableHTTPServerTransport>();

async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  const raw = Buffer.concat(chunks).toString("utf8");
  return raw ? JSON.parse(raw) : undefined;
}

async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  if (!req.url?.startsWith("/mcp")) {
    res.writeHead(req.url === "/healthz" ? 200 : 404).end();
    return;
  }
  const sessionId = req.headers["mcp-session-id"];
  const existing = typeof sessionId === "string" ? sessions.get(sessionId) : undefined;
  if (existing) {
    const body = req.method === "POST" ? await readJson(req) : undefined;
    await existing.handleRequest(req, res, body);
    return;
  }
  if (req.method !== "POST") {
    res.writeHead(400, { "content-type": "application/json" });
    res.end(JSON.stringify({ jsonrpc: "2.0", id: null, error: { code: -32000, message: "no session" } }));
    return;
  }
  const transport = new StreamableHTTPServerTransport({
    sessionIdGenerator: () => randomUUID(),
    onsessioninitialized: (id) => {
      sessions.set(id, transport);
    },
  });
  transport.onclose = () => {
    if (transport.sessionId) sessions.delete(transport.sessionId);
  };
  await buildServer().connect(transport);
  await transport.handleRequest(req, res, await readJson(req));
}

const port = Number(process.argv[2] ?? "0");
createServer((req, res) => {
  handle(req, res).catch((err: unknown) => {
    if (!res.headersSent) res.writeHead(500, { "content-type": "application/json" });
    res.end(JSON.stringify({ jsonrpc: "2.0", id: null, error: { code: -32603, message: String(err) } }));
  });
}).listen(port, "127.0.0.1", () => {
  console.log(`ts-tools listening on 127.0.0.1:${port}`);
});
