// A minimal AccountDO with the tminus `auth` table: enough to show where keyrotate's
// part goes. The app's own AccountDO keeps its methods and adds keyrotate(op).
import { DurableObject } from "cloudflare:workers";
import { loadKeys, openEnvelope, sealEnvelope } from "../worker/envelope.js";
import { accountKeyrotate } from "./keyrotate-objects.js";

export const ROW = "self";

export class AccountDO extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.sql.exec(`CREATE TABLE IF NOT EXISTS auth (
      account_id TEXT PRIMARY KEY, encrypted_tokens TEXT NOT NULL, scopes TEXT NOT NULL,
      updated_at TEXT NOT NULL DEFAULT (datetime('now')))`);
  }

  // keyrotate's entry point (RPC): census or rewrap of this object's envelope
  async keyrotate(op) {
    return accountKeyrotate(this.sql, this.keyEnv(), op, ROW);
  }

  // the keys this object uses: its own environment (the version it started with)
  keyEnv() {
    return this.env;
  }

  async initialize(tokens, scopes) {
    const sealed = await sealEnvelope(await loadKeys(this.keyEnv()), JSON.stringify(tokens));
    this.sql.exec("INSERT OR REPLACE INTO auth (account_id, encrypted_tokens, scopes) VALUES (?, ?, ?)",
      ROW, sealed, scopes);
  }

  // the app's read path: MASTER_KEY, or MASTER_KEY_PREVIOUS during a rotation
  async getTokens() {
    const rows = this.sql.exec("SELECT encrypted_tokens FROM auth WHERE account_id = ?", ROW).toArray();
    if (rows.length === 0) return null;
    const opened = await openEnvelope(await loadKeys(this.keyEnv()), rows[0].encrypted_tokens);
    return { tokens: JSON.parse(opened.payload), key: opened.keyName };
  }
}
