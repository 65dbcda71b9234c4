"""The host egress proxy: a sandbox's only way out, with a domain allowlist and host-scoped secrets."""
