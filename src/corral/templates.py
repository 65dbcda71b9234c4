"""Files corral writes for users (``corral init``)."""

STARTER_SPEC = '''\
# corral.toml: the agents of this project. Reference: docs/specs.md
# Run one with:  corral run fixer "make the failing test pass" --repo .

[agents.fixer]
# What the agent is told. AGENTS.md in the repository root is appended automatically.
instructions = """
You are a careful software engineer. Find the cause of the problem, make the smallest
change that fixes it, and run the tests before you finish.
"""

# provider:model. Providers: openai (Responses API), openai-chat (Chat Completions, also
# any OpenAI-compatible server: vLLM, Ollama, llama.cpp), anthropic.
model = "anthropic:claude-sonnet-5-5"
# base_url = "http://127.0.0.1:11434/v1"   # send requests elsewhere (a local server, a gateway)
# api_key_env = "ANTHROPIC_API_KEY"         # where the key comes from (default per provider)

engine = "native"

# The tools the agent may call (default: all built-in tools).
tools = ["read_file", "write_file", "edit_file", "glob", "grep", "execute", "diff"]

# Host environment variables the agent's commands may use; their values never reach the
# model or the journal (they appear as [secret:NAME]).
# secrets = ["NPM_TOKEN"]
# A secret scoped to hosts never enters the sandbox: commands see a placeholder, and the egress
# proxy (network = "allowlist") puts the value into requests to those hosts only.
# [agents.fixer.secrets.GITHUB_TOKEN]
# hosts = ["api.github.com"]

# Where commands run. "bubblewrap" (the default) isolates them in Linux namespaces with no
# network; "local" runs them on this machine, without isolation, and must be chosen by name.
[agents.fixer.sandbox]
backend = "bubblewrap"
network = "none"          # or "host", or "allowlist" with: allow = ["pypi.org", "*.github.com:443"]
memory_mb = 4096
exec_timeout_s = 120

[agents.fixer.budget]
max_turns = 40            # model calls
# max_tokens = 2_000_000  # input + output, all calls
max_cost_usd = 5.0
max_wall_time_s = 1800

# Structured output: the run's result carries JSON validated against this schema.
# [agents.fixer.output_schema]
# type = "object"
# properties = { summary = { type = "string" }, tests_pass = { type = "boolean" } }
# required = ["summary", "tests_pass"]

# Price overrides in USD per million tokens (default: the genai-prices table).
# [prices."openai-chat:my-local-model"]
# input_mtok = 0.0
# output_mtok = 0.0
'''
