// The Workers' envelope code, on Node's WebCrypto (globalThis.crypto.subtle), for interop tests.
// Reads one JSON request on stdin (keys travel on stdin, never argv):
//   {"op": "seal", "key": SECRET, "payloads": [STRING, ...]}        -> {"envelopes": [...]}
//   {"op": "open", "key": SECRET, "envelopes": [STRING|null, ...]}  -> {"payloads": [STRING|{"error":...}]}
//   {"op": "extras", "envelopes": [STRING, ...]} -> {"extras": [STRING|{"error":...}]}: what JSON.parse
//       reads in every field but the ones keyrotate owns, spelled so that Infinity, -Infinity
//       and -0 stay distinguishable
// Key derivation as in the Workers: exactly 64 hex chars = raw key, else SHA-256(UTF-8).
const subtle = globalThis.crypto.subtle;
const enc = new TextEncoder();
const dec = new TextDecoder();

const b64 = (buf) => Buffer.from(buf).toString("base64");
const unb64 = (s) => new Uint8Array(Buffer.from(s, "base64"));

async function importMasterKey(secret) {
  let raw;
  if (/^[0-9a-fA-F]{64}$/.test(secret)) {
    raw = new Uint8Array(secret.match(/../g).map((h) => parseInt(h, 16)));
  } else {
    raw = new Uint8Array(await subtle.digest("SHA-256", enc.encode(secret)));
  }
  return subtle.importKey("raw", raw, { name: "AES-GCM" }, false, ["encrypt", "decrypt"]);
}

async function seal(masterKey, plaintext) {
  const dekRaw = globalThis.crypto.getRandomValues(new Uint8Array(32));
  const dek = await subtle.importKey("raw", dekRaw, { name: "AES-GCM" }, false, ["encrypt"]);
  const iv = globalThis.crypto.getRandomValues(new Uint8Array(12));
  const dekIv = globalThis.crypto.getRandomValues(new Uint8Array(12));
  const ciphertext = await subtle.encrypt({ name: "AES-GCM", iv }, dek, enc.encode(plaintext));
  const encryptedDek = await subtle.encrypt({ name: "AES-GCM", iv: dekIv }, masterKey, dekRaw);
  return JSON.stringify({ iv: b64(iv), ciphertext: b64(ciphertext), encryptedDek: b64(encryptedDek), dekIv: b64(dekIv) });
}

async function open(masterKey, envelope) {
  const e = JSON.parse(envelope); // unknown fields (kid) are ignored, as in the Workers
  const dekRaw = await subtle.decrypt({ name: "AES-GCM", iv: unb64(e.dekIv) }, masterKey, unb64(e.encryptedDek));
  const dek = await subtle.importKey("raw", dekRaw, { name: "AES-GCM" }, false, ["decrypt"]);
  const pt = await subtle.decrypt({ name: "AES-GCM", iv: unb64(e.iv) }, dek, unb64(e.ciphertext));
  return dec.decode(pt);
}

const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const req = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const OWNED = new Set(["iv", "ciphertext", "encryptedDek", "dekIv", "kid"]);
const spell = (_, v) =>
  typeof v === "number" && (!Number.isFinite(v) || Object.is(v, -0)) ? `number:${Object.is(v, -0) ? "-0" : v}` : v;
function extras(envelope) {
  try {
    const e = JSON.parse(envelope);
    return JSON.stringify(Object.entries(e).filter(([k]) => !OWNED.has(k)), spell);
  } catch (err) {
    return { error: String(err.name) };
  }
}

const key = req.key === undefined ? null : await importMasterKey(req.key);
let out;
if (req.op === "extras") {
  out = { extras: req.envelopes.map(extras) };
} else if (req.op === "seal") {
  out = { envelopes: await Promise.all(req.payloads.map((p) => seal(key, p))) };
} else if (req.op === "open") {
  out = {
    payloads: await Promise.all(
      req.envelopes.map((e) => (e === null ? null : open(key, e).catch((err) => ({ error: String(err.name) })))),
    ),
  };
} else {
  throw new Error("unknown op");
}
process.stdout.write(JSON.stringify(out));
