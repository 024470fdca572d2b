// Reference dual-key decrypt for Workers (WebCrypto), for rotations with overlap.
//
// The Worker reads MASTER_KEY and, during a rotation, MASTER_KEY_PREVIOUS. A row that
// keyrotate wrote carries "kid" (a one-way id of the key that wraps its DEK): the right
// key is chosen by it. Rows the Workers wrote themselves have no kid: the current key is
// tried first, then the previous one. New rows are always sealed under MASTER_KEY.
//
// Key derivation, as keyrotate does it: exactly 64 hex characters are the raw key,
// anything else is SHA-256 of the string's UTF-8 bytes. The kid is the first 12 hex
// characters of HMAC-SHA256(key, "keyrotate key id v1").

const enc = new TextEncoder();
const dec = new TextDecoder();
const b64 = (buf) => btoa(String.fromCharCode(...new Uint8Array(buf)));
const unb64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));

async function rawKey(secret) {
  if (/^[0-9a-fA-F]{64}$/.test(secret)) {
    return new Uint8Array(secret.match(/../g).map((h) => parseInt(h, 16)));
  }
  return new Uint8Array(await crypto.subtle.digest("SHA-256", enc.encode(secret)));
}

async function keyId(raw) {
  const hmacKey = await crypto.subtle.importKey("raw", raw, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const mac = new Uint8Array(await crypto.subtle.sign("HMAC", hmacKey, enc.encode("keyrotate key id v1")));
  return [...mac].map((b) => b.toString(16).padStart(2, "0")).join("").slice(0, 12);
}

export async function loadKeys(env) {
  const keys = [];
  for (const name of ["MASTER_KEY", "MASTER_KEY_PREVIOUS"]) {
    if (!env[name]) continue;
    const raw = await rawKey(env[name]);
    keys.push({
      name,
      kid: await keyId(raw),
      key: await crypto.subtle.importKey("raw", raw, { name: "AES-GCM" }, false, ["encrypt", "decrypt"]),
    });
  }
  if (!keys.length) throw new Error("MASTER_KEY is not set");
  return keys;
}

async function unwrapDek(e, key) {
  return crypto.subtle.decrypt({ name: "AES-GCM", iv: unb64(e.dekIv) }, key, unb64(e.encryptedDek));
}

// Opens an envelope with whichever key wraps it: by kid when present, else current first.
export async function openEnvelope(keys, stored) {
  const e = JSON.parse(stored);
  const ordered = e.kid ? [...keys.filter((k) => k.kid === e.kid), ...keys.filter((k) => k.kid !== e.kid)] : keys;
  let lastError;
  let attempts = 0;
  for (const k of ordered) {
    attempts += 1;
    try {
      const dekRaw = await unwrapDek(e, k.key);
      const dek = await crypto.subtle.importKey("raw", dekRaw, { name: "AES-GCM" }, false, ["decrypt"]);
      const pt = await crypto.subtle.decrypt({ name: "AES-GCM", iv: unb64(e.iv) }, dek, unb64(e.ciphertext));
      return { payload: dec.decode(pt), keyName: k.name, attempts };
    } catch (err) {
      lastError = err;
    }
  }
  throw lastError || new Error("no key opens this envelope");
}

// Seals under the current key (MASTER_KEY), with its kid.
export async function sealEnvelope(keys, plaintext) {
  const current = keys[0];
  const dekRaw = crypto.getRandomValues(new Uint8Array(32));
  const dek = await crypto.subtle.importKey("raw", dekRaw, { name: "AES-GCM" }, false, ["encrypt"]);
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const dekIv = crypto.getRandomValues(new Uint8Array(12));
  const ciphertext = await crypto.subtle.encrypt({ name: "AES-GCM", iv }, dek, enc.encode(plaintext));
  const encryptedDek = await crypto.subtle.encrypt({ name: "AES-GCM", iv: dekIv }, current.key, dekRaw);
  return JSON.stringify({ iv: b64(iv), ciphertext: b64(ciphertext), encryptedDek: b64(encryptedDek), dekIv: b64(dekIv), kid: current.kid });
}

// The same DEK wrapped under the current key with a fresh dekIv; iv and ciphertext kept.
// `from` is the key that opened it (keys[1], MASTER_KEY_PREVIOUS, during a rotation). The
// payload is opened first: an envelope no Worker could read is reported, not rewritten.
export async function rewrapEnvelope(keys, stored, from) {
  const e = JSON.parse(stored);
  const current = keys[0];
  const dekRaw = new Uint8Array(await unwrapDek(e, from.key));
  const dek = await crypto.subtle.importKey("raw", dekRaw, { name: "AES-GCM" }, false, ["decrypt"]);
  await crypto.subtle.decrypt({ name: "AES-GCM", iv: unb64(e.iv) }, dek, unb64(e.ciphertext));
  const dekIv = crypto.getRandomValues(new Uint8Array(12));
  const encryptedDek = await crypto.subtle.encrypt({ name: "AES-GCM", iv: dekIv }, current.key, dekRaw);
  return JSON.stringify({ ...e, encryptedDek: b64(encryptedDek), dekIv: b64(dekIv), kid: current.kid });
}

// Which key opens an envelope, payload included: {key} or throws.
export async function openerOf(keys, stored) {
  const opened = await openEnvelope(keys, stored);
  return keys.find((k) => k.name === opened.keyName);
}
