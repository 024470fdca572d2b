// The Worker: keyrotate's endpoint and a health route; AccountDO is hosted here (as
// tminus hosts it in the api Worker).
import { keyrotateRoute } from "./keyrotate-objects.js";

export { AccountDO } from "./account-do.js";

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/health") return Response.json({ ok: true, data: { status: "healthy" } });
    if (url.pathname === "/internal/keyrotate/objects" && request.method === "POST") {
      return keyrotateRoute(request, env, env.ACCOUNT);
    }
    return new Response("not found", { status: 404 });
  },
};
