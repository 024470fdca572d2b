// keyrotate's Durable Object endpoint, wire protocol v1: a route for the Worker and the
// work inside each object. Small enough to port into an app (tminus: workers/api routes
// and durable-objects/account). No key ever travels in a request: the route and the
// objects use MASTER_KEY and MASTER_KEY_PREVIOUS from their own environment.
//
//   POST {"v": 1, "op": "ping" | "census" | "rewrap", "ids": [...], "rotation_id": "..."}
//   Authorization: Bearer <KEYROTATE_OBJECTS_TOKEN>
import { loadKeys, openerOf, rewrapEnvelope } from "../worker/envelope.js";
import { answer, ping, readRequest } from "../worker/keyrotate-route.js";

const MAX_IDS = 1000;

// The route. `namespace` is the Durable Object binding (env.ACCOUNT); each object must
// expose keyrotate(op) over RPC (see accountKeyrotate below).
export async function keyrotateRoute(request, env, namespace, tokenName = "KEYROTATE_OBJECTS_TOKEN") {
  const { body, refused } = await readRequest(request, env, tokenName);
  if (refused) return refused;
  if (body.op === "ping") return ping(env);
  if (!["census", "rewrap"].includes(body.op) || !Array.isArray(body.ids) || body.ids.length > MAX_IDS) {
    return answer({ error: "bad-request" }, 400);
  }
  if (body.op === "rewrap" && !env.MASTER_KEY_PREVIOUS) return answer({ error: "no-previous" }, 409);
  if (body.op === "rewrap" && typeof body.rotation_id !== "string") return answer({ error: "bad-request" }, 400);
  // fan out: every object of the batch at once; one object's trouble never fails the batch
  const results = await Promise.all(body.ids.map(async (id) => {
    try {
      const stub = namespace.get(namespace.idFromName(String(id)));
      return { id: String(id), ...(await stub.keyrotate(body.op)) };
    } catch (err) {
      // reset, overloaded, exceeded: transient for the object; keyrotate sends it again
      return { id: String(id), status: "retry", kid: null, reason: String((err && err.name) || "error") };
    }
  }));
  return answer({ results });
}

// Inside the object: `sql` is this.ctx.storage.sql, the envelope is in
// auth(account_id, encrypted_tokens, ...), one row (tminus keys it "self").
export async function accountKeyrotate(sql, env, op, rowKey = "self") {
  const rows = sql.exec("SELECT encrypted_tokens FROM auth WHERE account_id = ?", rowKey).toArray();
  if (rows.length === 0) return { status: "missing", kid: null };
  const stored = rows[0].encrypted_tokens;
  const keys = await loadKeys(env);
  let opener;
  try {
    opener = await openerOf(keys, stored);
  } catch (err) {
    const malformed = err instanceof SyntaxError || !(err && err.name === "OperationError");
    return { status: "failed", kid: null, reason: malformed ? "malformed envelope" : "opens under neither key" };
  }
  if (opener === keys[0]) return { status: "current", kid: opener.kid };
  if (op === "census") return { status: "old", kid: opener.kid };
  const rewrapped = await rewrapEnvelope(keys, stored, opener);
  // compare-and-swap on the value read: a token refresh may have run across the awaits
  // above (an object delivers other events while it waits on anything but its storage)
  const cursor = sql.exec(
    "UPDATE auth SET encrypted_tokens = ?, updated_at = datetime('now') WHERE account_id = ? AND encrypted_tokens = ?",
    rewrapped, rowKey, stored);
  return cursor.rowsWritten === 1 ? { status: "rewrapped", kid: keys[0].kid } : { status: "conflict", kid: null };
}
