"""The native engine: pydantic-ai's agent loop, with every model and tool call made a durable, journaled step."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import Any, ClassVar

from pydantic import ValidationError
from pydantic_ai import Agent, ModelRetry, RunContext, StructuredDict, Tool
from pydantic_ai.capabilities import ProcessHistory
from pydantic_ai.direct import model_request
from pydantic_ai.exceptions import (
    ModelAPIError,
    ModelConnectionError,
    ModelQuotaExceededError,
    ModelRateLimitError,
    ModelRequestRejectedError,
    ModelServerError,
    ModelUnavailableError,
)
from pydantic_ai.messages import (
    SYNTHESIZED_TOOL_RETURN_METADATA_KEY,
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelRequestPart,
    ModelResponse,
    TextPart,
    ToolReturnPart,
    UserPromptPart,
    repair_messages,
)
from pydantic_ai.models import Model, ModelRequestParameters
from pydantic_ai.models.wrapper import WrapperModel
from pydantic_ai.settings import ModelSettings
from pydantic_ai.usage import UsageLimits

from corral import events
from corral.engines.base import (
    NO_ONE_TO_ASK,
    ChildRequest,
    ChildResult,
    Conversation,
    Engine,
    EngineContext,
    EngineResult,
)
from corral.errors import BudgetExceededError, ModelCallError, ProgramFailedError
from corral.events import Usage
from corral.models.pricing import price_call
from corral.models.providers import ModelTarget, api_key_for, build_model, context_window, resolve_target
from corral.orchestration.interpreter import INTERPRETER, Outcome
from corral.orchestration.programs import EVAL_TOOL, TASK_TOOL, ProgramTool, TaskCall, context_note
from corral.policy.decide import Action, ActionKind, Decision, decide
from corral.policy.rules import READ_ONLY_CAPABILITIES, Capability
from corral.secrets.redact import redact_data
from corral.secrets.scanner import SCANNER
from corral.spec import ENGINE_TOOLS, AgentSpec, ModelPrice
from corral.tools.base import ToolContext, ToolDef, run_tool, scan_result

AGENTS_FILE = "AGENTS.md"
HISTORY_DIR = ".corral/history"
DEFAULT_WINDOW_TOKENS = 128_000

# How pydantic-ai answers the calls of a response that ended a run with a typed output (the
# output tool's call is the result; it never gets a reply until the conversation goes on), and
# the name it gives output tools (``final_result``, or ``final_result_<Name>`` for several).
_FINAL_RESULT = "Final result processed."
_OUTPUT_NOT_USED = "Output tool not used - a final result was already processed."
_TOOL_NOT_RUN = "Tool not executed - a final result was already processed."
_OUTPUT_TOOL_PREFIX = "final_result"


def _dump_messages(messages: list[ModelMessage]) -> list[dict[str, Any]]:
    return ModelMessagesTypeAdapter.dump_python(messages, mode="json")


def _retryable(err: BaseException) -> bool:
    """429, 5xx, overload, transport errors and unparseable responses are retried; rejections are not."""
    if isinstance(err, ModelRateLimitError | ModelUnavailableError | ModelServerError | ModelConnectionError):
        return True
    if isinstance(err, ModelRequestRejectedError | ModelQuotaExceededError):
        return False
    if isinstance(err, ModelAPIError):
        status = getattr(err, "status_code", None)
        return status is None or status == 429 or status >= 500
    return not isinstance(err, BudgetExceededError | asyncio.CancelledError)


def _is_connection_error(err: BaseException) -> bool:
    return isinstance(err, ModelConnectionError) or "connect" in type(err).__name__.lower()


def _describe(err: BaseException) -> str:
    status = getattr(err, "status_code", None)
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    prefix = f"HTTP {status}: " if status else ""
    return f"{prefix}{type(err).__name__}: {text}"[:500]


def _usage_of(response: ModelResponse) -> Usage:
    u = response.usage
    details = getattr(u, "details", None) or {}
    return Usage(
        input_tokens=u.input_tokens or 0,
        output_tokens=u.output_tokens or 0,
        cache_read_tokens=u.cache_read_tokens or 0,
        cache_write_tokens=u.cache_write_tokens or 0,
        reasoning_tokens=int(details.get("reasoning_tokens", 0) or 0),
    )


class DurableModel(WrapperModel):
    """Wraps a pydantic-ai model: budget checks, journaled retries, pricing, one durable step per call."""

    def __init__(
        self, wrapped: Any, *, ctx: EngineContext, target: ModelTarget, prices: Mapping[str, ModelPrice]
    ) -> None:
        super().__init__(wrapped)
        self._ctx = ctx
        self._target = target
        self._prices = prices
        self.calls = 0
        self.usage = Usage()
        self.last_input_tokens = 0

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        ctx, call = self._ctx, self.calls
        self.calls += 1
        last_response = max((i for i, m in enumerate(messages) if isinstance(m, ModelResponse)), default=-1)
        tool_names = [t.name for t in model_request_parameters.function_tools] + [
            t.name for t in model_request_parameters.output_tools
        ]
        ctx.emit(
            events.ModelRequested(
                key=f"model:{call}:request",
                call=call,
                model=self._target.ref,
                message_count=len(messages),
                new_messages=_dump_messages(messages[last_response + 1 :]),
                tools=tool_names,
            )
        )
        usage_before = self.usage

        async def attempt_call() -> dict[str, Any]:
            ctx.budget.check_model_call(call, usage_before)
            return await self._call_with_retries(call, messages, model_settings, model_request_parameters)

        try:
            payload = await ctx.steps.model_call(attempt_call)
        except ModelCallError as err:
            ctx.emit(
                events.ModelFailed(
                    key=f"model:{call}:error",
                    call=call,
                    error=str(err.message),
                    error_type=err.cause_type,
                    attempts=err.attempts,
                )
            )
            raise
        response = ModelMessagesTypeAdapter.validate_python([payload["response"]])[0]
        assert isinstance(response, ModelResponse)
        usage = Usage(**payload["usage"])
        self.usage = self.usage + usage
        self.last_input_tokens = usage.input_tokens
        ctx.emit(
            events.ModelResponded(
                key=f"model:{call}:response",
                ts=payload["ts"],
                duration_ms=payload["duration_ms"],
                call=call,
                model=self._target.ref,
                parts=payload["response"]["parts"],
                finish_reason=response.finish_reason,
                attempts=payload["attempts"],
                price_source=payload["price_source"],
                **usage.model_dump(exclude={"unpriced_calls"}),
            )
        )
        ctx.on_usage(self.usage, self.calls)
        return response

    def _at(self) -> str:
        """`` at URL``: the endpoint calls go to (a connection error means nothing without it)."""
        url = getattr(self.wrapped, "base_url", None) or self._target.base_url
        return f" at {url}" if url else ""

    async def _call_with_retries(
        self,
        call: int,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        params: ModelRequestParameters,
    ) -> dict[str, Any]:
        started = time.time()
        t0 = time.monotonic()
        response, attempts = await self._request_with_retries(call, messages, model_settings, params)
        usage = _usage_of(response)
        # Price by the model the response names (a dated snapshot, say), else by the one asked for.
        cost, source = 0.0, "unknown"
        for name in dict.fromkeys([response.model_name or self._target.name, self._target.name]):
            cost, source = price_call(
                usage, model=name, provider=self._target.pricing_provider, overrides=self._prices, ref=self._target.ref
            )
            if source != "unknown":
                break
        usage = usage.model_copy(update={"cost_usd": cost, "unpriced_calls": int(source == "unknown")})
        dumped = redact_data(_dump_messages([response])[0], self._ctx.redact)
        return {
            "response": dumped,
            "usage": usage.model_dump(),
            "ts": started,
            "duration_ms": (time.monotonic() - t0) * 1000,
            "attempts": attempts,
            "price_source": source,
        }

    async def _request_with_retries(
        self,
        call: int,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        params: ModelRequestParameters,
    ) -> tuple[ModelResponse, int]:
        policy = self._ctx.spec.retry
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self.wrapped.request(messages, model_settings, params), attempt
            except Exception as err:
                if not _retryable(err) or attempt >= policy.max_attempts:
                    failure = ModelCallError(
                        f"model call {call + 1} to {self._target.ref}{self._at()} failed after {attempt} "
                        f"attempt(s): {_describe(err)}",
                        attempts=attempt,
                        cause_type=type(err).__name__,
                        hint="check the model server, the API key and the model name; "
                        "`corral trace RUN` shows each attempt",
                    )
                    raise failure from None
                retry_after = getattr(err, "retry_after", None)
                backoff = min(policy.initial_backoff_s * 2 ** (attempt - 1), policy.max_backoff_s)
                if isinstance(retry_after, int | float):
                    wait = min(float(retry_after), policy.max_backoff_s)
                else:
                    wait = backoff * (0.5 + random.random() / 2)
                self._ctx.emit(
                    events.ModelRetried(
                        key=f"model:{call}:retry:{attempt}",
                        call=call,
                        attempt=attempt,
                        error=_describe(err) + (self._at() if _is_connection_error(err) else ""),
                        status_code=getattr(err, "status_code", None),
                        wait_s=wait,
                    )
                )
                await asyncio.sleep(wait)


class _Compactor:
    """A history processor: near the context limit, evict old turns to a workspace file and leave a pointer.

    The first request (the conversation's first task) and this run's task always stay: a
    follow-up's task comes after the conversation it continues, and may be among the evicted.
    """

    def __init__(self, ctx: EngineContext, model: DurableModel, window: int, *, prompt: str) -> None:
        self._ctx = ctx
        self._model = model
        self._window = window
        self._count = 0
        self._prompt = prompt

    async def __call__(self, messages: list[ModelMessage]) -> list[ModelMessage]:
        policy = self._ctx.spec.context
        used = self._model.last_input_tokens
        if used < policy.compact_at * self._window or len(messages) <= policy.keep_recent_messages + 2:
            return messages
        # Cut just before a model response so tool calls and their returns stay together and the
        # kept history still alternates request, response, request...
        cut = len(messages) - policy.keep_recent_messages
        while cut > 1 and not isinstance(messages[cut], ModelResponse):
            cut -= 1
        if cut <= 1:
            return messages
        first = messages[0]
        evicted = messages[1:cut]
        self._count += 1
        path = f"{HISTORY_DIR}/compacted-{self._model.calls:04d}.json"
        text = json.dumps(_dump_messages(evicted), indent=1)
        await self._ctx.sandbox.write_file(path, self._ctx.redact(text).encode())
        self._ctx.emit(
            events.ContextCompacted(
                key=f"compact:{self._model.calls}",
                evicted_messages=len(evicted),
                kept_messages=len(messages) - len(evicted),
                saved_to=path,
                input_tokens_before=used,
            )
        )
        turns = sum(1 for m in evicted if isinstance(m, ModelResponse))
        note = UserPromptPart(
            f"[corral] To stay within the context window, {len(evicted)} earlier messages of this session "
            f"({turns} model turns removed) were saved to {path} and left out of the conversation. Read that "
            "file (read_file with line ranges) if you need anything from them."
        )
        task = [
            part
            for message in evicted
            if isinstance(message, ModelRequest)
            for part in message.parts
            if isinstance(part, UserPromptPart) and part.content == self._prompt
        ]
        assert isinstance(first, ModelRequest)
        return [ModelRequest(parts=[*first.parts, note, *task], instructions=first.instructions), *messages[cut:]]


def reply_text(ok: bool, text: str) -> str:
    """A tool's result as the model gets it."""
    return text if ok else f"ERROR: {text}"


class _ToolCalls:
    """Every tool call of one run, the model's and its programs': policy, the journal, the durable step."""

    def __init__(self, ctx: EngineContext) -> None:
        self._ctx = ctx
        self._numbers = itertools.count()
        self._calls: Counter[str] = Counter()  # per tool, for count rules; rebuilt the same way when a run resumes

    def tool(self, tooldef: ToolDef) -> Tool[Any]:
        """The tool as the model sees it."""

        async def call_tool(run_ctx: RunContext[Any], **kwargs: Any) -> str:
            return reply_text(*await self.call(tooldef, kwargs, run_ctx.tool_call_id))

        return Tool.from_schema(
            call_tool,
            name=tooldef.name,
            description=tooldef.description,
            json_schema=tooldef.json_schema(),
            takes_ctx=True,
        )

    def eval_tool(self, programs: ProgramTool) -> Tool[Any]:
        """``eval``: a program whose tool calls come back here, each with the eval's call as parent."""

        async def run_eval(run_ctx: RunContext[Any], program: str) -> str:
            ok, text, _ = await self.run_program(programs, program, run_ctx.tool_call_id, run_ctx.run_step)
            return reply_text(ok, text)

        return Tool.from_schema(
            run_eval,
            name=EVAL_TOOL,
            description=programs.description(),
            json_schema={
                "type": "object",
                "properties": {"program": {"type": "string", "description": "The Python program to run."}},
                "required": ["program"],
                "additionalProperties": False,
            },
            takes_ctx=True,
        )

    async def call(
        self, tooldef: ToolDef, kwargs: dict[str, Any], call_id: str | None, parent: str | None = None
    ) -> tuple[bool, str]:
        """One tool call: journaled, decided by policy (maybe by a person), run as a durable step."""
        ctx = self._ctx
        n, call_id = self._start(tooldef.name, kwargs, call_id, parent)
        decision = await self._gate(n, call_id, tooldef.name, frozenset(tooldef.capabilities), kwargs)
        if not decision.allowed:
            return False, _refused(ctx, n, call_id, tooldef.name, decision)

        async def execute(idempotency_key: str) -> dict[str, Any]:
            ctx.budget.check_wall_time()  # a command must not start once the run is out of time
            tool_ctx = ToolContext(
                sandbox=ctx.sandbox,
                run_id=ctx.run_id,
                idempotency_key=idempotency_key,
                redact=ctx.redact,
                scan=SCANNER.scan if ctx.spec.scan_secrets else None,
                output_limit=ctx.spec.sandbox.output_limit,
                exec_timeout=ctx.budget.clip(ctx.spec.sandbox.exec_timeout_s),
            )
            started = time.time()
            outcome = await run_tool(tooldef, tool_ctx, kwargs)
            return {**asdict(outcome), "ts": started}

        if not set(tooldef.capabilities) <= READ_ONLY_CAPABILITIES:
            await ctx.sandbox.open()  # one made on first use is made now, in a step of its own before this one
        result = await ctx.steps.tool_call(execute)
        ctx.emit(
            events.ToolReturned(
                key=f"tool:{n}:result",
                ts=result["ts"],
                duration_ms=result["duration_ms"],
                call_id=call_id,
                tool=tooldef.name,
                ok=result["ok"],
                text=result["text"],
                error=result["error"],
                spilled_to=result["spilled_to"],
                exit_code=result.get("exit_code"),
            )
        )
        self._secrets(n, call_id, tooldef.name, result.get("secrets") or [])
        return result["ok"], result["text"]

    async def run_program(
        self, programs: ProgramTool, program: str, call_id: str | None, turn: int | None = None
    ) -> tuple[bool, str, Outcome | None]:
        """One ``eval``: policy on the program, the program (its calls journaled under it), its result
        redacted and scanned. Returns (ok, the text the model reads, the outcome; None if refused)."""
        n, call_id = self._start(EVAL_TOOL, {"program": program}, call_id, None)
        decision = await self._gate(n, call_id, EVAL_TOOL, frozenset(), {"program": program})
        if not decision.allowed:
            return False, _refused(self._ctx, n, call_id, EVAL_TOOL, decision), None
        started = time.time()
        outcome = await programs.run(program, call_id, turn)
        scan = SCANNER.scan if self._ctx.spec.scan_secrets else None
        text, secrets = scan_result(scan, self._ctx.redact(outcome.text()))
        error = None if outcome.ok else _PROGRAM_ERRORS[outcome.error_kind or "runtime"]
        self._returned(n, call_id, EVAL_TOOL, ok=outcome.ok, text=text, error=error, ts=started)
        self._secrets(n, call_id, EVAL_TOOL, secrets)
        return outcome.ok, text, outcome

    async def task(self, request: TaskCall) -> tuple[bool, Any]:
        """A program's ``task()``: limits, policy (``kind="dispatch"``), then the child run, journaled as a call."""
        ctx = self._ctx
        args: dict[str, Any] = {"agent": request.agent, "description": request.description}
        if request.label is not None:
            args["label"] = request.label
        if request.schema is not None:
            args["schema"] = request.schema
        n, call_id = self._start(TASK_TOOL, args, request.call_id, request.parent_call_id)
        problem = self._dispatch_limit(request)
        spec = ctx.spec.subagent(request.agent)
        if problem is None and spec is None:  # the bridge checks the type; this is the boundary
            problem = f"no subagent type {request.agent!r} in this agent's spec"
        if problem is None and spec is not None:
            try:
                spec = _child_spec(spec, request.schema, ctx.spec.programs.schema_retries)
            except ValueError as err:
                problem = f"task(): {err}"
        if problem is not None or spec is None:
            text = ctx.redact(problem or "")
            error = "LimitExceeded" if text.startswith("limit:") else "TaskError"
            self._returned(n, call_id, TASK_TOOL, ok=False, text=text, error=error)
            return False, text
        capabilities = frozenset(
            cap for tool in spec.tools if tool in ctx.tools for cap in ctx.tools[tool].capabilities
        )
        decision = await self._gate(n, call_id, TASK_TOOL, capabilities, args, kind="dispatch", count=request.number)
        if not decision.allowed:
            return False, _refused(ctx, n, call_id, TASK_TOOL, decision)
        assert ctx.dispatch is not None  # checked among the limits
        started = time.time()
        result = await ctx.dispatch(ChildRequest(call_id, spec, request.description, request.label))
        text = _task_text(result, request.agent)
        error = None if result.ok else "TaskError"
        self._returned(n, call_id, TASK_TOOL, ok=result.ok, text=text, error=error, ts=started)
        if not result.ok:
            return False, text
        return True, result.output if result.output is not None else (result.text or "")

    def _dispatch_limit(self, request: TaskCall) -> str | None:
        """Why this dispatch may not happen (a limit, or no runtime to run children), or None."""
        ctx, programs = self._ctx, self._ctx.spec.programs
        if ctx.dispatch is None:
            return "this engine runs without a runtime: it cannot start subagents"
        if ctx.depth >= programs.max_depth:
            return (
                f"limit: this run is at depth {ctx.depth} of its tree, the deepest allowed "
                f"(programs.max_depth = {programs.max_depth}): it cannot dispatch subagents"
            )
        if request.number > programs.max_dispatches:
            return f"limit: a program may dispatch {programs.max_dispatches} subagents (programs.max_dispatches)"
        if self._calls[TASK_TOOL] > programs.max_run_dispatches:
            return (
                f"limit: this run may dispatch {programs.max_run_dispatches} subagents in all "
                "(programs.max_run_dispatches)"
            )
        return None

    def _returned(
        self, n: int, call_id: str, tool: str, *, ok: bool, text: str, error: str | None, ts: float | None = None
    ) -> None:
        """The ``tool.result`` event of an engine tool (``eval``, ``task``) that started at ``ts``."""
        started = time.time() if ts is None else ts
        self._ctx.emit(
            events.ToolReturned(
                key=f"tool:{n}:result",
                ts=started,
                duration_ms=(time.time() - started) * 1000,
                call_id=call_id,
                tool=tool,
                ok=ok,
                text=text,
                error=error,
            )
        )

    def _start(self, tool: str, args: dict[str, Any], call_id: str | None, parent: str | None) -> tuple[int, str]:
        n = next(self._numbers)
        call_id = call_id or f"call-{n}"
        self._ctx.emit(
            events.ToolCalled(key=f"tool:{n}:call", call_id=call_id, tool=tool, args=args, parent_call_id=parent)
        )
        self._calls[tool] += 1
        return n, call_id

    async def _gate(
        self,
        n: int,
        call_id: str,
        tool: str,
        capabilities: frozenset[Capability],
        kwargs: dict[str, Any],
        *,
        kind: ActionKind = "tool",
        count: int | None = None,
    ) -> Decision:
        """What policy says about the call, after asking a person when it says ``ask``."""
        ctx = self._ctx
        action = Action(
            tool=tool,
            arguments=kwargs,
            capabilities=capabilities,
            run_id=ctx.run_id,
            agent=ctx.spec.name,
            depth=ctx.depth,
            count=self._calls[tool] if count is None else count,
            kind=kind,
        )
        decision = decide(ctx.spec.policy, action)
        if ctx.spec.policy.decides:  # an agent without a policy decides nothing: no event per call
            ctx.emit(
                events.PolicyDecided(
                    key=f"tool:{n}:policy",
                    call_id=call_id,
                    tool=tool,
                    kind=kind,
                    verdict=decision.verdict,
                    rule=decision.rule,
                    reason=ctx.redact(decision.reason),
                )
            )
        if decision.verdict == "ask":  # a person decides; this waits, durably, as long as it takes
            decision = await ctx.ask(action, decision, call_id) if ctx.ask is not None else NO_ONE_TO_ASK
        return decision

    def _secrets(self, n: int, call_id: str, tool: str, found: list[dict[str, Any]]) -> None:
        if found:
            key = f"tool:{n}:secrets"
            self._ctx.emit(events.SecretsDetected(key=key, where="tool", call_id=call_id, tool=tool, findings=found))


_PROGRAM_ERRORS = {
    "syntax": "SyntaxError",
    "type": "TypeCheckError",
    "runtime": "ProgramError",
    "limit": "LimitExceeded",
}


_TASK_TEXT_CHARS = 4_000


def _program_tool(ctx: EngineContext, calls: _ToolCalls) -> ProgramTool:
    """What the run's programs may call (its tools, ``task()`` and its subagent types) and their limits."""
    spec = ctx.spec
    allowed = spec.programs.tools or tuple(name for name in spec.tools if name not in ENGINE_TOOLS)
    subagents = {name: sub for name in spec.subagent_types() if (sub := spec.subagent(name)) is not None}
    return ProgramTool(
        spec=spec.programs,
        tools={name: ctx.tools[name] for name in allowed},
        call_tool=calls.call,
        emit=ctx.emit,
        redact=ctx.redact,
        interpreter=INTERPRETER,
        context=ctx.context,
        dispatch=calls.task if ctx.dispatch is not None and ctx.depth < spec.programs.max_depth else None,
        subagents={name: _about(sub) for name, sub in subagents.items()},
        typed_subagents=frozenset(name for name, sub in subagents.items() if sub.output_schema),
    )


class ScriptEngine(Engine):
    """A run whose task is a program a person wrote (``corral script``): no model drives it.

    The program runs exactly as a model's ``eval`` does — the same interpreter, bridges, limits,
    policy and journal — and its printed output and last value are the run's text. The spec's
    model is the one its subagents (the built-in roles) use.
    """

    name: ClassVar[str] = "script"

    async def run(self, ctx: EngineContext) -> EngineResult:
        calls = _ToolCalls(ctx)
        ok, text, outcome = await calls.run_program(_program_tool(ctx, calls), ctx.task, "script")
        if not ok:
            kind = outcome.error_kind if outcome is not None and outcome.error_kind else "refused"
            raise ProgramFailedError(f"the script's program failed:\n{text}", error_kind=kind)
        return EngineResult(text=text, turns=0)


def _about(spec: AgentSpec) -> str:
    """A subagent type in a few words, for the ``eval`` tool's description: its instructions' first sentence."""
    first = spec.instructions.strip().split("\n", 1)[0]
    sentence = first.split(". ", 1)[0].rstrip(".")
    return (sentence[:157] + "...") if len(sentence) > 160 else sentence


def _task_text(result: ChildResult, agent: str) -> str:
    """A child's ending as its ``task`` call's result: the answer (shortened for the journal), or why it failed."""
    who = f"subagent {agent} (run {result.run_id})"
    if result.conflict is not None:
        return (
            f"{who} finished, but its changes ({result.patch_files} file(s)) do not apply to this workspace: "
            f"{result.conflict}; `corral diff {result.run_id}` shows them"
        )
    if result.status != "succeeded":
        return f"{who} {result.status}: {result.error or 'no reason given'}"
    answer = json.dumps(result.output, ensure_ascii=False) if result.output is not None else (result.text or "")
    if len(answer) > _TASK_TEXT_CHARS:
        answer = answer[:_TASK_TEXT_CHARS] + f"… ({len(answer):,} characters)"
    return answer


def _child_spec(spec: AgentSpec, schema: dict[str, Any] | None, retries: int) -> AgentSpec:
    """The subagent type's spec as dispatched: with the program's schema (validated like a spec's) and
    the dispatching agent's number of corrections."""
    if schema is None:
        return spec.model_copy(update={"output_retries": retries})
    try:
        return AgentSpec.model_validate({**spec.model_dump(), "output_schema": schema, "output_retries": retries})
    except ValidationError as err:
        raise ValueError("; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())) from None


def _refused(ctx: EngineContext, n: int, call_id: str, tool: str, decision: Decision) -> str:
    """A tool call policy did not allow: it never runs; the reason is its error (the model's, or the program's)."""
    rule = f" (rule {decision.rule})" if decision.rule else ""
    text = ctx.redact(f"denied by policy{rule}: {decision.reason}")
    ctx.emit(
        events.ToolReturned(
            key=f"tool:{n}:result", call_id=call_id, tool=tool, ok=False, text=text, error="PolicyDenied"
        )
    )
    return text


def message_history(conversation: Conversation) -> list[ModelMessage]:
    """The continued conversation as pydantic-ai messages, with every tool call answered.

    pydantic-ai takes a new prompt only after a history whose calls all have replies, and the
    journal has none for the last calls of a run: the output tool's call that ended it (answered
    here as pydantic-ai answers it when the conversation goes on in the same run), or the calls a
    failed or cancelled run never got to (its result when the journal holds one, else a note that
    the run ended). Everything comes from the journals, so a resumed follow-up sends the same.
    """
    messages = ModelMessagesTypeAdapter.validate_python(list(conversation.messages))
    last = next((m for m in reversed(messages) if isinstance(m, ModelResponse)), None)
    final_calls = {call.tool_call_id for call in last.tool_calls} if last is not None else set()
    closing = _ClosingReplies(
        final_calls=final_calls if conversation.ended == "succeeded" else set(),
        returned=conversation.tool_results,
        cut_off=f"[corral] Not run: the run ended ({conversation.ended}) before this call was answered.",
    )
    return [
        replace(message, parts=[closing(part) for part in message.parts])
        if isinstance(message, ModelRequest)
        else message
        for message in repair_messages(messages)
    ]


class _ClosingReplies:
    """Words for the replies :func:`repair_messages` made up for calls that never got one."""

    def __init__(self, *, final_calls: set[str], returned: Mapping[str, events.ToolReturned], cut_off: str) -> None:
        self._final_calls = final_calls
        self._returned = returned
        self._cut_off = cut_off
        self._result_given = False

    def __call__(self, part: ModelRequestPart) -> ModelRequestPart:
        if not (isinstance(part, ToolReturnPart) and (part.metadata or {}).get(SYNTHESIZED_TOOL_RETURN_METADATA_KEY)):
            return part
        if (returned := self._returned.get(part.tool_call_id)) is not None:
            return replace(part, content=reply_text(returned.ok, returned.text), metadata=None, outcome="success")
        if part.tool_call_id not in self._final_calls:
            return replace(part, content=self._cut_off)
        if not part.tool_name.startswith(_OUTPUT_TOOL_PREFIX):
            return replace(part, content=_TOOL_NOT_RUN, metadata=None, outcome="success")
        content = _OUTPUT_NOT_USED if self._result_given else _FINAL_RESULT
        self._result_given = True
        return replace(part, content=content, metadata=None, outcome="success")


def _settings(spec: AgentSpec) -> ModelSettings | None:
    settings: ModelSettings = {}
    if spec.max_output_tokens is not None:
        settings["max_tokens"] = spec.max_output_tokens
    if spec.temperature is not None:
        settings["temperature"] = spec.temperature
    return settings or None


async def _instructions(ctx: EngineContext) -> str:
    text = ctx.spec.instructions.strip()
    try:
        agents_md = (await ctx.sandbox.read_file(AGENTS_FILE)).decode("utf-8", errors="replace").strip()
    except Exception:
        agents_md = ""
    if agents_md:
        text += f"\n\n## Repository instructions ({AGENTS_FILE})\n\n{agents_md}"
    return ctx.redact(text)


class NativeEngine(Engine):
    """corral's own loop on any model API, built on pydantic-ai.

    ``model`` replaces the client built from ``spec.model`` with a pydantic-ai model object (for
    example ``pydantic_ai.models.function.FunctionModel``): the loop, the durable steps, budgets and
    the journal stay the same, so tests and benchmarks can run the real engine without HTTP.
    """

    name: ClassVar[str] = "native"

    def __init__(self, model: Model | None = None) -> None:
        self._model = model

    async def run(self, ctx: EngineContext) -> EngineResult:
        spec = ctx.spec
        target = resolve_target(spec.model, base_url=spec.base_url, api_key_env=spec.api_key_env)
        prices = spec.prices
        if self._model is not None:
            return await self._run(ctx, target, self._model, prices)
        client = build_model(target, api_key_for(target))
        try:
            return await self._run(ctx, target, client.model, prices)
        finally:
            await client.aclose()  # on this loop: its connections belong to it

    async def _run(
        self, ctx: EngineContext, target: ModelTarget, inner: Any, prices: Mapping[str, ModelPrice]
    ) -> EngineResult:
        spec = ctx.spec
        prompt = ctx.redact(ctx.task)
        if ctx.context is not None:  # the input stays out of the conversation; the model reads about it
            prompt += "\n\n" + ctx.redact(context_note(ctx.context))
        model = DurableModel(inner, ctx=ctx, target=target, prices=prices)
        history: list[ModelMessage] | None = None
        if ctx.history is not None:
            history = message_history(ctx.history)
            # A long continued conversation may need compacting before this run's first call.
            model.last_input_tokens = ctx.history.input_tokens
        window = spec.context.window_tokens or context_window(target) or DEFAULT_WINDOW_TOKENS
        calls = _ToolCalls(ctx)
        tools = [calls.tool(ctx.tools[name]) for name in spec.tools if name not in ENGINE_TOOLS]
        programs = _program_tool(ctx, calls) if EVAL_TOOL in spec.tools else None
        if programs is not None:
            tools.append(calls.eval_tool(programs))
        try:
            if not tools and spec.output_schema is None and history is None:
                answered = await self._one_call(ctx, model, prompt)
                if answered is not None:
                    return answered
            return await self._loop(ctx, model, prompt, history, tools, window)
        finally:
            if programs is not None:
                await asyncio.shield(programs.close())  # a session kept across programs goes back to the pool

    async def _one_call(self, ctx: EngineContext, model: DurableModel, prompt: str) -> EngineResult | None:
        """A run with no tools and no schema is one model call: made directly (pydantic-ai's
        ``direct.model_request``), through the same durable, metered, journaled model. None when the
        answer holds no text (then the agent loop runs, as for any run, and asks again)."""
        request = ModelRequest(parts=[UserPromptPart(prompt)], instructions=await _instructions(ctx))
        response = await model_request(model, [request], model_settings=_settings(ctx.spec))
        text = "".join(part.content for part in response.parts if isinstance(part, TextPart))
        if not text.strip() or response.tool_calls:
            return None
        return EngineResult(text=text, output=None, turns=model.calls)

    async def _loop(
        self,
        ctx: EngineContext,
        model: DurableModel,
        prompt: str,
        history: list[ModelMessage] | None,
        tools: list[Tool[Any]],
        window: int,
    ) -> EngineResult:
        spec = ctx.spec
        output_type: Any = str
        if spec.output_schema is not None:
            output_type = StructuredDict(spec.output_schema, name=spec.output_schema.get("title", "result"))
        settings = _settings(spec)
        agent = Agent(
            model,
            instructions=await _instructions(ctx),
            tools=tools,
            output_type=output_type,
            retries={"tools": 3, "output": spec.output_retries},
            name=spec.name,
            capabilities=[ProcessHistory(processor=_Compactor(ctx, model, window, prompt=prompt))],
        )
        if spec.output_schema is not None:
            from jsonschema import Draft202012Validator

            validator = Draft202012Validator(spec.output_schema)

            @agent.output_validator
            def _validate(output: Any) -> Any:
                errors = sorted(validator.iter_errors(output), key=lambda e: list(e.path))
                if errors:
                    detail = "; ".join(f"{'/'.join(map(str, e.path)) or '(root)'}: {e.message}" for e in errors[:5])
                    raise ModelRetry(f"the output does not match the required schema: {detail}")
                return output

        async with agent:  # closes the provider's HTTP client on the loop that opened it
            result = await agent.run(
                prompt,
                message_history=history,
                usage_limits=UsageLimits(request_limit=None),
                model_settings=settings,
            )
        output = result.output
        if isinstance(output, str):
            return EngineResult(text=output, output=None, turns=model.calls)
        texts = [
            p.content
            for m in result.all_messages()
            if isinstance(m, ModelResponse)
            for p in m.parts
            if isinstance(p, TextPart)
        ]
        text = texts[-1] if texts else ""
        return EngineResult(text=str(text), output=dict(output), turns=model.calls)
