// The test Worker: the reference endpoint and AccountDO from examples/durable-objects,
// plus hooks the tests drive. Nothing here is keyrotate's: tokens are sealed and opened
// by the Workers' own WebCrypto code (examples/worker/envelope.js).
//   /test/seed, /test/tokens, /test/refresh, /test/flag, /test/corrupt, /test/stats, /test/seal,
//   /test/generation (which .dev.vars this workerd loaded), /test/d1 (creates the local D1)
// FAULT_RATE (a .dev.vars value) makes the keyrotate route answer 503 or 429 at random;
// RETRY_AFTER makes it answer every request 429 with that Retry-After.
import { keyrotateRoute } from "../../../examples/durable-objects/keyrotate-objects.js";
import { AccountDO as Reference, ROW } from "../../../examples/durable-objects/account-do.js";
import { loadKeys, openEnvelope, sealEnvelope } from "../../../examples/worker/envelope.js";

export class AccountDO extends Reference {
  constructor(ctx, env) {
    super(ctx, env);
    this.sql.exec("CREATE TABLE IF NOT EXISTS test_state (name TEXT PRIMARY KEY, value INTEGER NOT NULL)");
  }

  flag(name) {
    const row = this.sql.exec("SELECT value FROM test_state WHERE name = ?", name).toArray()[0];
    return row ? row.value : 0;
  }

  setFlag(name, value) {
    this.sql.exec("INSERT OR REPLACE INTO test_state (name, value) VALUES (?, ?)", name, value);
  }

  // a stale object: still running the version from before the push, with its secrets
  keyEnv() {
    if (this.flag("stale") && this.env.MASTER_KEY_PREVIOUS) return { MASTER_KEY: this.env.MASTER_KEY_PREVIOUS };
    return this.env;
  }

  async keyrotate(op) {
    const result = await super.keyrotate(op);
    if (result.status === "rewrapped") this.setFlag("rewraps", this.flag("rewraps") + 1);
    return result;
  }

  async seed(id, withKid) {
    await this.initialize({ access_token: `at-${id}`, refresh_token: `rt-${id}`, expiry: "2030-01-01T00:00:00Z" }, "calendar");
    if (!withKid) {  // as the tminus Workers write it: no kid
      const row = this.sql.exec("SELECT encrypted_tokens FROM auth WHERE account_id = ?", ROW).toArray()[0];
      const e = JSON.parse(row.encrypted_tokens);
      delete e.kid;
      this.sql.exec("UPDATE auth SET encrypted_tokens = ? WHERE account_id = ?", JSON.stringify(e), ROW);
    }
  }

  // the app's token refresh: read (either key), new tokens, written under MASTER_KEY,
  // with awaits in between, as the real one has (fetch to Google, WebCrypto)
  async refresh(n) {
    const current = await this.getTokens();
    await new Promise((resolve) => setTimeout(resolve, 1));
    const tokens = { ...current.tokens, access_token: `refreshed-${n}` };
    const sealed = await sealEnvelope(await loadKeys(this.keyEnv()), JSON.stringify(tokens));
    this.sql.exec("UPDATE auth SET encrypted_tokens = ?, updated_at = datetime('now') WHERE account_id = ?", sealed, ROW);
    return tokens.access_token;
  }

  async corrupt() {
    this.sql.exec("UPDATE auth SET encrypted_tokens = ? WHERE account_id = ?", '{"iv": "broken', ROW);
  }

  async remove() {
    this.sql.exec("DELETE FROM auth WHERE account_id = ?", ROW);
  }

  async stats() {
    return { rewraps: this.flag("rewraps") };
  }
}

const each = async (env, ids, fn) =>
  Object.fromEntries(await Promise.all(ids.map(async (id) => {
    try {
      return [id, await fn(env.ACCOUNT.get(env.ACCOUNT.idFromName(String(id))), id)];
    } catch (err) {
      return [id, { error: String(err && err.message) }];
    }
  })));

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/health") return Response.json({ ok: true, data: { status: "healthy" } });
    if (url.pathname === "/internal/keyrotate/objects") {
      if (env.RETRY_AFTER) {  // a .dev.vars value: every request is rate-limited this long
        return Response.json({ v: 1, error: "rate-limited" }, { status: 429, headers: { "Retry-After": env.RETRY_AFTER } });
      }
      const rate = Number(env.FAULT_RATE || 0);
      if (rate && Math.random() < rate) {
        return Math.random() < 0.5
          ? new Response("overloaded", { status: 503 })
          : Response.json({ v: 1, error: "rate-limited" }, { status: 429, headers: { "Retry-After": "0" } });
      }
      return keyrotateRoute(request, env, env.ACCOUNT);
    }
    if (url.pathname === "/test/generation") return Response.json({ generation: env.DEV_VARS_GENERATION ?? null });
    if (url.pathname === "/test/d1") return Response.json(await env.DB.prepare("SELECT 1 AS ok").first());
    const body = request.method === "POST" ? await request.json() : {};
    const ids = body.ids || [];
    switch (url.pathname) {
      case "/test/seed": return Response.json(await each(env, ids, (s, id) => s.seed(id, !!body.with_kid)));
      case "/test/tokens": return Response.json(await each(env, ids, (s) => s.getTokens()));
      case "/test/refresh": return Response.json(await each(env, ids, (s) => s.refresh(body.n)));
      case "/test/flag": return Response.json(await each(env, ids, (s) => s.setFlag(body.name, body.value)));
      case "/test/corrupt": return Response.json(await each(env, ids, (s) => s.corrupt()));
      case "/test/remove": return Response.json(await each(env, ids, (s) => s.remove()));
      case "/test/stats": return Response.json(await each(env, ids, (s) => s.stats()));
      case "/test/seal": {  // envelopes for D1 rows, sealed by the Workers' code under MASTER_KEY
        const keys = await loadKeys(env);
        return Response.json(await Promise.all((body.payloads || []).map(async (p) => {
          const e = JSON.parse(await sealEnvelope(keys, p));
          delete e.kid;
          return JSON.stringify(e);
        })));
      }
      case "/test/open": {
        const keys = await loadKeys(env);
        return Response.json(await Promise.all((body.values || []).map(async (v) => {
          try {
            return (await openEnvelope(keys, v)).payload;
          } catch {
            return null;
          }
        })));
      }
    }
    return new Response("not found", { status: 404 });
  },
};
