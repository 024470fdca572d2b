// keyrotate's route on a Worker that holds MASTER_KEY, wire protocol v1, `ping` only:
// which keys *this version* of the Worker holds. keyrotate asks each version of the
// current deployment (Cloudflare-Workers-Version-Overrides picks the version) before and
// after every push, deploy, rollback and abort, and refuses to move traffic to a version
// whose keys do not open every row. No key ever travels: the answer is key ids (kids).
//
//   POST {"v": 1, "op": "ping"}   Authorization: Bearer <KEYROTATE_OBJECTS_TOKEN>
//   200  {"v": 1, "ok": true, "kid": "<MASTER_KEY's kid>", "previous_kid": "<...>" | null}
import { loadKeys } from "./envelope.js";

export const VERSION = 1;
const enc = new TextEncoder();

export async function sameSecret(a, b) {
  // constant time: compare SHA-256 digests of equal length, never the strings themselves
  const [x, y] = await Promise.all([a, b].map((s) => crypto.subtle.digest("SHA-256", enc.encode(s))));
  return crypto.subtle.timingSafeEqual(x, y);
}

export const answer = (body, status = 200) => Response.json({ v: VERSION, ...body }, { status });

// The bearer token checked, the body read: {body} or {refused: Response}.
export async function readRequest(request, env, tokenName = "KEYROTATE_OBJECTS_TOKEN") {
  const token = (request.headers.get("Authorization") || "").replace(/^Bearer /, "");
  if (!env[tokenName] || !(await sameSecret(token, env[tokenName]))) {
    return { refused: answer({ error: "unauthorized" }, 401) };
  }
  let body;
  try {
    body = await request.json();
  } catch {
    return { refused: answer({ error: "bad-request" }, 400) };
  }
  if (body.v !== VERSION) return { refused: answer({ error: "unsupported-version" }, 400) };
  return { body };
}

export async function ping(env) {
  const keys = await loadKeys(env);
  return answer({ ok: true, kid: keys[0].kid, previous_kid: keys[1] ? keys[1].kid : null });
}

// The route for a Worker without Durable Object targets: ping only.
export async function keyrotatePing(request, env, tokenName = "KEYROTATE_OBJECTS_TOKEN") {
  const { body, refused } = await readRequest(request, env, tokenName);
  if (refused) return refused;
  if (body.op !== "ping") return answer({ error: "bad-request" }, 400);
  return ping(env);
}
