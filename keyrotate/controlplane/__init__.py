"""The control plane: the commands that act on the Workers (secrets list and push, deploy,
rollback, canary, health). Each change goes into the audit trail. Depends on the
evidence, the Cloudflare adapters and the layers below, never on the data plane."""
