// A minimal Worker over the reference schema: GET /tokens/<account_id> opens that row's
// tokens with MASTER_KEY or MASTER_KEY_PREVIOUS; GET /health answers the health contract;
// POST /internal/keyrotate answers keyrotate's ping (which keys this version holds).
import { loadKeys, openEnvelope } from "./envelope.js";
import { keyrotatePing } from "./keyrotate-route.js";

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/health") {
      return Response.json({ ok: true, data: { status: "healthy" } });
    }
    if (url.pathname === "/internal/keyrotate" && request.method === "POST") {
      return keyrotatePing(request, env);
    }
    const m = url.pathname.match(/^\/tokens\/([^/]+)$/);
    if (!m) return new Response("not found", { status: 404 });
    const row = await env.DB.prepare("SELECT encrypted_tokens FROM accounts WHERE account_id = ?").bind(m[1]).first();
    if (!row) return new Response("no such account", { status: 404 });
    try {
      const opened = await openEnvelope(await loadKeys(env), row.encrypted_tokens);
      return Response.json({ ok: true, key: opened.keyName, attempts: opened.attempts,
                             payload: JSON.parse(opened.payload) });
    } catch (err) {
      return Response.json({ ok: false, error: String(err && err.name) }, { status: 500 });
    }
  },
};
