"""The control plane: the manifest, the environment context, wrangler (the one subprocess
runner), health checks, and the commands on Workers: secrets list/push, deploy,
rollback, validate, D1 migrations. Depends on the data plane and below, never above."""
