"""Evidence for the security team: the tamper-evident audit trail kept in the
environment's database, and notifications of what happened to webhooks and Slack."""
