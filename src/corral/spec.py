"""Agent specs: the validated, hashable description of an agent, loaded from corral.toml or built in Python."""

from __future__ import annotations

import functools
import hashlib
import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import ErrorDetails

from corral.errors import SpecError, UnknownAgentError
from corral.policy.rules import PolicySpec, RuleOfTwoField
from corral.sandbox.types import GitUser, HostPatternText, Limits, Mounts, NetworkProfile, PackageCache

SPEC_FILE_NAME = "corral.toml"

#: Tools an agent gets when its spec does not list any: all the built-in ones (``corral.tools.builtin``
#: defines them; a test keeps the two lists equal, so the spec need not import the tools layer).
DEFAULT_TOOLS = ("read_file", "write_file", "edit_file", "glob", "grep", "execute", "diff")
BUILTIN_TOOL_NAMES = frozenset(DEFAULT_TOOLS)
ENGINE_ENTRY_POINTS = "corral.engines"
#: The deepest a tree of runs may grow (``max_depth``'s bound; the workers' child queues go this deep).
MAX_TREE_DEPTH = 8


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Budget(_Strict):
    """Hard limits for one run. A run that reaches one stops with status ``failed``."""

    max_tokens: Annotated[int, Field(gt=0)] | None = None
    """Input + output tokens over all model calls."""
    max_cost_usd: Annotated[float, Field(gt=0)] | None = None
    max_wall_time_s: Annotated[float, Field(gt=0)] | None = None
    max_turns: Annotated[int, Field(gt=0)] | None = 50
    """Model calls (one turn = one request to the model)."""


class RetryPolicy(_Strict):
    """How model calls are retried on 429, 5xx and transport errors (each retry is journaled)."""

    max_attempts: Annotated[int, Field(ge=1, le=20)] = 4
    initial_backoff_s: Annotated[float, Field(ge=0)] = 1.0
    max_backoff_s: Annotated[float, Field(ge=0)] = 30.0


_LIMIT_KEYS = tuple(Limits.model_fields)
_NETWORK_KEYS = tuple(key for key in NetworkProfile.model_fields if key != "mode")


class SandboxProfile(_Strict):
    """Where and how the agent's commands run: the backend, and the sandbox's own network and limits types.

    In TOML the limits sit flat in ``[agents.NAME.sandbox]`` (``memory_mb = 2048``), and an allowlist
    may be written ``network = "allowlist"`` with ``allow = [...]`` (and the network's other fields) beside it, or as
    ``network = { mode = "allowlist", allow = [...] }``.
    """

    backend: str = "bubblewrap"
    """``bubblewrap`` (isolated, the default) or ``local`` (no isolation; must be named explicitly)."""
    exec_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    """Default and maximum wall time of one ``execute`` call."""
    output_limit: Annotated[int, Field(gt=0)] = 20_000
    """Characters of a tool result the model sees; larger results are saved to a workspace file."""
    network: NetworkProfile = NetworkProfile()
    limits: Limits = Limits()
    git_user: GitUser = GitUser()
    """Author and committer of commits made in the sandbox (``{ name = "...", email = "..." }``)."""
    package_cache: PackageCache = "off"
    """``read-write``: pip, npm and uv share one cache per host user, so a run reuses what an earlier run
    downloaded, but any run can change what later runs install from. ``read-only``: a run reads the
    cache and its own downloads stay its own. ``off``: every run downloads everything."""
    mounts: Mounts = ()
    """Host directories (a toolchain, a virtualenv) the sandbox sees read-only at the same path."""
    pool: Annotated[int, Field(ge=0, le=64)] = 0
    """Sandboxes of this shape kept prepared by a long-lived process (bubblewrap, as root): a run or a
    child run then gets one in milliseconds. 0: each is made when asked for."""

    @model_validator(mode="before")
    @classmethod
    def _toml_shape(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        data = dict(value)
        network = data.get("network")
        if isinstance(network, str):
            network = data["network"] = {"mode": network}
        beside = [key for key in _NETWORK_KEYS if key in data]
        if beside:
            if network is None:
                network = {"mode": "none"}  # so the error says these need the allowlist mode
            if not isinstance(network, dict) or any(key in network for key in beside):
                raise ValueError(f"{beside[0]} is given twice: beside network and inside it")
            data["network"] = {**network, **{key: data.pop(key) for key in beside}}
        flat = {key: data.pop(key) for key in _LIMIT_KEYS if key in data}
        if flat:
            if "limits" in data:
                raise ValueError(f"limits are given twice: as {', '.join(flat)} and as a limits table")
            data["limits"] = flat
        return data


class SecretScope(_Strict):
    """Where a secret may be used. With ``hosts``, commands see only a placeholder and the egress
    proxy puts the value into requests to those hosts; without, commands get the value itself."""

    hosts: tuple[HostPatternText, ...] = ()
    """``host``, ``host:port`` or ``*.domain``, as in the network allowlist."""


class ContextPolicy(_Strict):
    """When and how the conversation history is compacted."""

    window_tokens: Annotated[int, Field(gt=1000)] | None = None
    """The model's context window; looked up from the model name when not given."""
    compact_at: Annotated[float, Field(gt=0.1, lt=1.0)] = 0.8
    """Compact when the last request used this fraction of the window."""
    keep_recent_messages: Annotated[int, Field(ge=2)] = 6


class ProgramsSpec(_Strict):
    """What the programs an agent writes (its ``eval`` tool) may call, and the limits that bound each one."""

    tools: tuple[str, ...] | None = None
    """The tools a program may call as ``tools.<name>(...)``; default: the agent's own (``eval`` aside)."""
    cpu_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    """Interpreter time per program (waiting on tools excluded): an endless loop stops here."""
    memory_mb: Annotated[int, Field(ge=8, le=16384)] = 256
    wall_s: Annotated[float, Field(gt=0)] = 600.0
    """Wall-clock time per program, its tool calls included."""
    host_calls: Annotated[int, Field(ge=1, le=1_000_000)] = 1_000
    """Tool calls (and ``log`` lines) per program; the next one raises inside it."""
    output_chars: Annotated[int, Field(ge=100)] = 20_000
    """Characters of printed output kept per program."""
    max_dispatches: Annotated[int, Field(ge=0, le=100_000)] = 200
    """``task()`` calls per program; the next one raises inside it."""
    max_run_dispatches: Annotated[int, Field(ge=0, le=1_000_000)] = 2_000
    """``task()`` calls over the whole run (all its programs)."""
    max_depth: Annotated[int, Field(ge=0, le=MAX_TREE_DEPTH)] = 2
    """How deep the tree of runs may grow: a root run is at depth 0, its children at 1. A run at this
    depth cannot dispatch."""
    max_concurrent: Annotated[int, Field(ge=1, le=1024)] = 16
    """Children of one run running at the same time; more wait for a slot."""
    persistence: Literal["call", "turn", "thread"] = "call"
    """What a program sees of the programs before it: nothing (``call``: a fresh interpreter each time),
    the globals of the programs of the same model turn (``turn``), or of every program of the run
    (``thread``: variables and functions live on, like a notebook)."""
    schema_retries: Annotated[int, Field(ge=0, le=10)] = 2
    """How many times a child whose answer does not match its schema is told why and asked again."""


ENGINE_TOOLS = ("eval",)
"""Tools an engine provides itself rather than the tool registry: ``eval`` runs programs."""


class ModelPrice(_Strict):
    """A price override in USD per million tokens (``[prices."provider:model"]`` in corral.toml)."""

    input_mtok: Annotated[float, Field(ge=0)]
    output_mtok: Annotated[float, Field(ge=0)]
    cache_read_mtok: Annotated[float, Field(ge=0)] | None = None
    cache_write_mtok: Annotated[float, Field(ge=0)] | None = None


class AgentSpec(_Strict):
    """One agent: what it is told, which model drives it, what it may touch, and its limits."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    instructions: str = "You are a careful software engineer working in a repository."
    model: str
    """``openai:<model>`` (Responses API), ``openai-chat:<model>`` (Chat Completions, also for any
    OpenAI-compatible server), ``anthropic:<model>``, ``scripted:<bundled name or script file>``."""
    base_url: str | None = None
    """Send model requests here instead of the provider's default (vLLM, Ollama, llama.cpp, a gateway)."""
    api_key_env: str | None = None
    """Environment variable holding the API key (default: the provider's usual one)."""
    engine: str = "native"
    """The loop that drives the agent: an engine installed in the ``corral.engines`` entry point group."""
    tools: tuple[str, ...] = DEFAULT_TOOLS
    secrets: dict[str, SecretScope] = {}
    """Host environment variables that hold secrets (a list of names, or a table of name = scope). Their
    values never reach the model or the journal; a secret scoped to hosts never enters the sandbox."""
    budget: Budget = Budget()
    retry: RetryPolicy = RetryPolicy()
    sandbox: SandboxProfile = SandboxProfile()
    policy: PolicySpec = PolicySpec()
    """What the agent's actions need: rules (first match wins), the default, the approval timeout. In
    corral.toml the project's ``[policy]`` follows the agent's own ``[agents.NAME.policy]`` rules."""
    rule_of_two: RuleOfTwoField = None
    """``"acknowledged"``, or ``{ untrusted_input, sensitive_data, outbound }`` declared over the inference
    (``corral check`` shows both)."""
    scan_secrets: bool = True
    """Scan tool results, the final text, the typed output and the patch for secrets nobody registered
    (detect-secrets): findings are replaced by ``[secret:detected:<type>]`` (the patch is flagged)."""
    context: ContextPolicy = ContextPolicy()
    programs: ProgramsSpec = ProgramsSpec()
    """With ``eval`` among the tools: what the agent's programs may call and their limits."""
    output_schema: dict[str, Any] | None = None
    """A JSON schema: when given, the run's result carries output validated against it."""
    output_retries: Annotated[int, Field(ge=0, le=10)] = 2
    """How many times an answer that does not match ``output_schema`` goes back to the model with the
    reasons, before the run fails."""
    subagents: dict[str, AgentSpec] = {}
    """The subagent types its programs may dispatch with ``task(..., agent=NAME)``, each a full agent
    spec (in corral.toml: names of other agents in the file). The built-in roles (``explorer``,
    ``worker``, ``reviewer``) are always available unless a declared type takes their name."""
    max_output_tokens: Annotated[int, Field(gt=0)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    prices: dict[str, ModelPrice] = {}

    @field_validator("sandbox", mode="before")
    @classmethod
    def _sandbox_shorthand(cls, value: Any) -> Any:
        return {"backend": value} if isinstance(value, str) else value

    @field_validator("secrets", mode="before")
    @classmethod
    def _secrets_list(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return {name: {} for name in value}
        return value

    @field_validator("model")
    @classmethod
    def _model_has_provider(cls, value: str, info: ValidationInfo) -> str:
        provider, sep, name = value.partition(":")
        if not sep or not provider or not name:
            raise ValueError(f"expected 'provider:model' (for example 'anthropic:claude-sonnet-5-5'), got {value!r}")
        if provider == "scripted" and name.endswith((".toml", ".json")):
            # The run records the script's absolute path, so `corral resume` from anywhere finds it.
            base = Path((info.context or {}).get("spec_dir") or Path.cwd())
            return f"scripted:{(base / Path(name).expanduser()).resolve()}"
        return value

    @field_validator("engine")
    @classmethod
    def _engine_installed(cls, value: str) -> str:
        installed = installed_engines()
        if value not in installed:
            raise ValueError(f"unknown engine {value!r} (installed: {', '.join(installed) or 'none'})")
        return value

    @field_validator("tools")
    @classmethod
    def _tools_unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        duplicates = sorted({t for t in value if value.count(t) > 1})
        if duplicates:
            raise ValueError(f"listed more than once: {', '.join(duplicates)}")
        return value

    @model_validator(mode="after")
    def _program_tools_are_the_agents(self) -> AgentSpec:
        outside = [t for t in self.programs.tools or () if t not in self.tools or t in ENGINE_TOOLS]
        if outside:
            raise ValueError(
                f"programs.tools: {', '.join(outside)} not among the agent's own tools "
                f"({', '.join(t for t in self.tools if t not in ENGINE_TOOLS) or 'none'}); "
                "a program may only call what the agent may"
            )
        return self

    @field_validator("subagents")
    @classmethod
    def _subagent_names(cls, value: dict[str, AgentSpec]) -> dict[str, AgentSpec]:
        bad = [name for name in value if not SUBAGENT_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"subagent type names are identifiers (letters, digits, _ and -): {', '.join(bad)}")
        return value

    @field_validator("output_schema")
    @classmethod
    def _schema_is_object(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return value
        from jsonschema import Draft202012Validator, SchemaError

        try:
            Draft202012Validator.check_schema(value)
        except SchemaError as err:
            raise ValueError(f"not a valid JSON schema: {err.message}") from None
        if value.get("type") != "object":
            raise ValueError('the output schema must describe an object ("type": "object")')
        return value

    def subagent_types(self) -> tuple[str, ...]:
        """The names ``task(agent=...)`` accepts: the declared types, then the built-in roles."""
        return tuple(dict.fromkeys([*self.subagents, *BUILTIN_ROLES]))

    def all_secrets(self) -> set[str]:
        """The secrets its runs may read: its own and those of the subagent types it may dispatch."""
        return set(self.secrets).union(*(sub.all_secrets() for sub in self.subagents.values()))

    def subagent(self, name: str) -> AgentSpec | None:
        """The spec of subagent type ``name`` (declared, else a built-in role made for this agent); None if unknown."""
        if name in self.subagents:
            return self.subagents[name]
        if name in BUILTIN_ROLES:
            return builtin_role(name, self)
        return None

    @property
    def provider(self) -> str:
        return self.model.partition(":")[0]

    @property
    def model_name(self) -> str:
        return self.model.partition(":")[2]

    def content_hash(self) -> str:
        """A stable hash of everything that changes the agent's behaviour (its version)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def with_overrides(
        self, changes: Mapping[str, Any] | None = None, /, *, names: Mapping[str, str] | None = None, **fields: Any
    ) -> AgentSpec:
        """A copy with some fields replaced, validated again exactly as a spec file is.

        ``changes`` maps dotted field paths to values: ``{"budget.max_turns": 5}`` replaces one
        field of a table and keeps the rest of it; ``fields`` are top-level fields by keyword.
        ``None`` values are skipped. A value that does not validate raises ``SpecError`` naming
        each rejected field by its path, or by what ``names`` calls that path (``{"budget.max_turns":
        "--max-turns"}``), so the message points at what the user typed.
        """
        data = self.model_dump()
        for path, value in {**(changes or {}), **fields}.items():
            if value is not None:
                _set_path(data, path, value)
        try:
            return AgentSpec.model_validate(data)
        except ValidationError as err:
            problems = [f"{_name_of(e['loc'], names or {})}: {_reason(e)}" for e in err.errors()]
            raise SpecError(f"agent '{self.name}': invalid override\n  " + "\n  ".join(problems)) from None


SUBAGENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")

READ_ONLY_TOOLS = ("read_file", "glob", "grep")
REVIEW_FINDINGS_SCHEMA: dict[str, Any] = {
    "title": "review",
    "type": "object",
    "properties": {
        "findings": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "file": {"type": "string"},
                    "line": {"type": "integer", "minimum": 0},
                    "severity": {"type": "string", "enum": ["low", "medium", "high", "critical"]},
                    "description": {"type": "string"},
                },
                "required": ["file", "line", "severity", "description"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["findings"],
    "additionalProperties": False,
}
"""What a ``reviewer`` returns: ``{"findings": [{file, line, severity, description}, ...]}``."""

#: The roles every agent with ``eval`` may dispatch without declaring them: what each may use, what it
#: is told, and what it returns. A role inherits the dispatching agent's model, sandbox and policy.
BUILTIN_ROLES: dict[str, dict[str, Any]] = {
    "explorer": {
        "tools": READ_ONLY_TOOLS,
        "instructions": (
            "You explore a repository to answer one question for another agent. You cannot change files. "
            "Read only what you need; answer with short notes: the facts found, with file paths and line "
            "numbers, and what you could not find."
        ),
    },
    "reviewer": {
        "tools": READ_ONLY_TOOLS,
        "instructions": (
            "You review code for another agent. You cannot change files. Read what the task points at and "
            "report each real problem once, as a finding with its file, line, severity (low, medium, high, "
            "critical) and a one-sentence description. No findings is a valid answer."
        ),
        "output_schema": REVIEW_FINDINGS_SCHEMA,
    },
    "worker": {
        "tools": DEFAULT_TOOLS,
        "instructions": (
            "You make one change in a repository for another agent, in your own copy of its workspace; your "
            "changes go back to it as a patch. Change only what the task asks, check your work (run the tests "
            "if there are any), and end with a short summary of what you changed."
        ),
    },
}

#: What a built-in role takes over from the agent that dispatches it.
_INHERITED = ("model", "base_url", "api_key_env", "retry", "sandbox", "policy", "scan_secrets", "prices")


def builtin_role(role: str, parent: AgentSpec) -> AgentSpec:
    """The built-in role ``role`` as ``parent`` dispatches it: the role's tools and words, ``parent``'s model."""
    inherited = {name: getattr(parent, name) for name in _INHERITED}
    return AgentSpec.model_validate({"name": role, **inherited, **BUILTIN_ROLES[role]})


class ProjectConfig(BaseModel):
    """Everything in one corral.toml: its agents and the project-wide price overrides."""

    model_config = ConfigDict(frozen=True)

    path: Path | None = None
    agents: dict[str, AgentSpec] = {}

    def agent(self, name: str) -> AgentSpec:
        try:
            return self.agents[name]
        except KeyError:
            where = f" in {self.path}" if self.path else ""
            known = ", ".join(sorted(self.agents)) or "none"
            raise UnknownAgentError(
                f"no agent named {name!r}{where} (defined: {known})",
                hint="add an [agents.NAME] table or run `corral init` to write a starter file",
            ) from None


def _reason(error: ErrorDetails) -> str:
    return error["msg"].removeprefix("Value error, ")


def _set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for the path ``a.b``, copying the tables on the way."""
    *tables, last = path.split(".")
    for key in tables:
        inner = data.get(key)
        data[key] = dict(inner) if isinstance(inner, Mapping) else {}
        data = data[key]
    data[last] = value


def _name_of(loc: tuple[int | str, ...], names: Mapping[str, str]) -> str:
    """What to call the field at ``loc``: the name given for its longest dotted prefix, else ``field 'a.b'``."""
    parts = [str(p) for p in loc]
    for end in range(len(parts), 0, -1):
        name = names.get(".".join(parts[:end]))
        if name is not None:
            return name
    return f"field '{'.'.join(parts) or '(table)'}'"


def _format_validation_error(path: Path, agent: str | None, err: ValidationError, *, prefix: str = "") -> str:
    lines = [f"  {_name_of((prefix, *e['loc']) if prefix else e['loc'], {})}: {_reason(e)}" for e in err.errors()]
    where = f"{path}: agent '{agent}'" if agent else f"{path}"
    return f"{where}: invalid spec\n" + "\n".join(lines)


def parse_config(data: dict[str, Any], path: Path) -> ProjectConfig:
    """Validate a parsed corral.toml document; errors name the file, the agent and the field."""
    unknown_top = sorted(set(data) - {"agents", "prices", "policy"})
    if unknown_top:
        raise SpecError(
            f"{path}: unknown top-level table(s): {', '.join(unknown_top)} (expected [agents.NAME], [prices], [policy])"
        )
    try:
        project_policy = PolicySpec.model_validate(data.get("policy", {}))
    except ValidationError as err:
        raise SpecError(_format_validation_error(path, None, err, prefix="policy")) from None
    agents_raw = data.get("agents", {})
    if not isinstance(agents_raw, dict):
        raise SpecError(f"{path}: 'agents' must be a table of [agents.NAME] tables")
    prices_raw = data.get("prices", {})
    agents: dict[str, AgentSpec] = {}
    declared: dict[str, tuple[str, ...]] = {}  # agent -> the subagent types it names (other agents, roles)
    for name, table in agents_raw.items():
        if not isinstance(table, dict):
            raise SpecError(f"{path}: agent '{name}': expected a table, got {type(table).__name__}")
        table = dict(table)
        named = table.pop("subagents", [])
        if not isinstance(named, list) or not all(isinstance(n, str) for n in named):
            raise SpecError(
                f"{path}: agent '{name}': invalid spec\n  field 'subagents': a list of agent names "
                f"(other [agents.NAME] tables, or the built-in roles {', '.join(BUILTIN_ROLES)})"
            )
        declared[name] = tuple(named)
        merged = {"name": name, **table}
        if prices_raw:
            merged["prices"] = {**prices_raw, **table.get("prices", {})}
        try:
            agents[name] = AgentSpec.model_validate(merged, context={"spec_dir": path.parent.absolute()})
        except ValidationError as err:
            raise SpecError(_format_validation_error(path, name, err)) from None
        spec = agents[name]
        policy = spec.policy.combined(project_policy, agent=name)
        agents[name] = spec = spec.model_copy(update={"policy": policy})
        for rule in policy.rules:
            strangers = unknown_tools(rule.tool, extra=POLICY_ONLY_TOOLS)
            if strangers:
                raise SpecError(
                    f"{path}: agent '{name}': invalid spec\n  field '{rule.name}.tool': unknown tool(s) "
                    f"{', '.join(strangers)}",
                    hint=f"built-in tools: {', '.join(DEFAULT_TOOLS)}",
                )
        unknown = unknown_tools(agents[name].tools)
        if unknown:
            raise SpecError(
                f"{path}: agent '{name}': invalid spec\n  field 'tools': unknown tool(s) {', '.join(unknown)}",
                hint=f"built-in tools: {', '.join(DEFAULT_TOOLS)}",
            )
    return ProjectConfig(path=path, agents=_with_subagents(path, agents, declared))


def _with_subagents(
    path: Path, agents: dict[str, AgentSpec], declared: Mapping[str, tuple[str, ...]]
) -> dict[str, AgentSpec]:
    """Each agent with the specs of the subagent types it names embedded (a run records its whole tree).

    A name is another agent of the file, or a built-in role (always available, so naming one only
    documents it). Types nest: a subagent's own subagents come with it. A cycle is refused.
    """
    resolved: dict[str, AgentSpec] = {}

    def resolve(name: str, chain: tuple[str, ...]) -> AgentSpec:
        if name in resolved:
            return resolved[name]
        subagents: dict[str, AgentSpec] = {}
        for sub in declared.get(name, ()):
            if sub in chain or sub == name:
                cycle = " -> ".join([*chain, name, sub])
                raise SpecError(
                    f"{path}: agent '{chain[0] if chain else name}': subagent types form a cycle: {cycle}",
                    hint="an agent that splits its work among copies of itself does it in one program",
                )
            if sub in agents:
                subagents[sub] = resolve(sub, (*chain, name))
            elif sub not in BUILTIN_ROLES:
                known = ", ".join([*sorted(agents), *BUILTIN_ROLES])
                raise SpecError(
                    f"{path}: agent '{name}': invalid spec\n  field 'subagents': no agent named {sub!r} "
                    f"(agents and built-in roles: {known})"
                )
        spec = agents[name]
        resolved[name] = spec.model_copy(update={"subagents": subagents}) if subagents else spec
        return resolved[name]

    return {name: resolve(name, ()) for name in agents}


POLICY_ONLY_TOOLS = ("task",)
"""Names a policy rule may match besides the built-in tools: ``task`` is a program's subagent dispatch."""


def unknown_tools(names: tuple[str, ...], extra: tuple[str, ...] = ()) -> list[str]:
    """The names that are neither built-in tools, engine tools (``eval``) nor in ``extra``."""
    return [t for t in names if t not in BUILTIN_TOOL_NAMES and t not in ENGINE_TOOLS and t not in extra]


@functools.cache
def installed_engines() -> tuple[str, ...]:
    """Names in the ``corral.engines`` entry point group (read from package metadata once per process,
    nothing imported: reading it costs milliseconds, and every spec validation asks)."""
    from importlib.metadata import entry_points

    return tuple(sorted({ep.name for ep in entry_points(group=ENGINE_ENTRY_POINTS)}))


def load_config(path: Path) -> ProjectConfig:
    """Read and validate a corral.toml file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: file not found", hint="run `corral init` to write a starter corral.toml") from None
    except OSError as err:
        raise SpecError(f"{path}: cannot read: {err.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"{path}: not valid TOML: {err}") from None
    return parse_config(data, path)


def find_config(start: Path) -> Path | None:
    """The nearest corral.toml at or above ``start``."""
    for directory in (start, *start.parents):
        candidate = directory / SPEC_FILE_NAME
        if candidate.is_file():
            return candidate
    return None
