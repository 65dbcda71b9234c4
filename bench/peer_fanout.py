"""Fan-out peer benchmark: what one subagent dispatch costs in LangChain deepagents + langchain-quickjs.

    python bench/peer_fanout.py --setup [--venv PATH]
    python bench/peer_fanout.py [--dispatches N] [--concurrency C] [--shape pool|all|batches] [--json]

The peer is the closest thing to corral's fan-out (a model-written program dispatching many typed subagents in
parallel): a ``deepagents.create_deep_agent`` agent with ``langchain_quickjs.CodeInterpreterMiddleware``, whose
``eval`` tool runs model-written JavaScript in QuickJS. Inside that JavaScript the middleware installs a global
``task({description, subagentType, label?, responseSchema?}) -> Promise``; each call goes through the bridge
(``_Repl._register_task_bridge``), hops from the QuickJS worker thread to the agent's event loop, and runs
deepagents' own ``task`` tool, that is, one full subagent graph (``create_agent`` with deepagents' default
subagent middleware stack) per dispatch. The bridge holds an ``asyncio.Semaphore`` of
``max_subagent_concurrency`` per REPL, so excess calls wait for capacity.

What one measured run does, all in one fresh process inside the peer's venv (``--setup`` builds it at
``~/.cache/corral-bench/peer-venv`` from the pins in ``bench/peer-requirements.txt``, outside the repository, so
corral's own ``.venv`` never holds the peer):

1. builds the agent: root model and subagent model are ``BaseChatModel`` subclasses answering instantly and
   natively async (no network, no thread hop): the root model's first answer is one ``eval`` tool call carrying
   the JavaScript below, its second answer echoes the tool's result; the ``worker`` subagent's model answers
   ``ok:<its task description>`` as its final text in one step;
2. runs one warm-up fan-out of ``--warmup`` dispatches (default C, so imports, schema builds and the first
   QuickJS runtime are not counted), then ``--repeats`` measured runs of ``await agent.ainvoke(...)``, each
   one root turn whose single ``eval`` call dispatches N subagents;
3. reports, per measured run (the top-level figures are the fastest run's), its wall time (the whole
   ``ainvoke``: two root model calls, the QuickJS eval, N subagent graphs) and wall / N as the per-dispatch
   cost; the peak RSS of the process (``getrusage(RUSAGE_SELF).ru_maxrss``, which includes the interpreter, the
   imported libraries and the warm-up) and its RSS after the imports and after the warm-up, so the growth due
   to the fan-out is visible; the count of results that came back right, checked twice: in JavaScript
   (``results[i] === "ok:item i"``, returned through the eval's result) and in Python (how many times the
   subagent model answered); and the most ``task()`` calls the JavaScript had in flight at once.

The JavaScript (``--shape``) bounds concurrency at C in one of three ways, all real uses of the peer's API:

- ``pool`` (default): C async workers in JavaScript pull the next index from a shared counter, so exactly
  min(C, remaining) ``task()`` calls are in flight at any time, like ``asyncio.gather`` over a semaphore; the
  bridge's cap (``max_subagent_concurrency=C``) is never the one that waits;
- ``all``: ``Promise.all`` over all N ``task()`` calls at once; the bridge's semaphore of C is what bounds
  concurrency (N pending host calls, C running);
- ``batches``: the pattern langchain-quickjs's own system prompt teaches: ``Promise.all`` over consecutive
  slices of C, so each batch waits for its slowest dispatch (with instant subagents that is close to ``pool``).

Nothing here is durable: no checkpointer is configured (a LangGraph checkpointer would persist state between
graph steps, not per dispatch), so ``durable`` is reported as false. The parent process (any Python 3.11+;
``machine_facts`` comes from ``bench/support.py``) never imports the peer; the child imports nothing of corral.
The table goes to stderr; ``--json`` prints the report on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PEER = "deepagents+langchain-quickjs"
REQUIREMENTS = Path(__file__).resolve().with_name("peer-requirements.txt")
DEFAULT_VENV = Path("~/.cache/corral-bench/peer-venv").expanduser()
STAMP = ".corral-peer-requirements.sha256"
"""File in the venv holding the hash of the requirements it was built from; --setup is a no-op when it matches."""
VERSIONED = ["deepagents", "langchain-quickjs", "quickjs-rs", "langchain", "langchain-core", "langgraph"]
SUBAGENT = "worker"
SHAPES = ("pool", "all", "batches")
CHILD_ENV = {
    # No tracing, no telemetry: the run must not reach the network.
    "LANGSMITH_TRACING": "false",
    "LANGCHAIN_TRACING_V2": "false",
    "LANGSMITH_API_KEY": "",
    "LANGCHAIN_API_KEY": "",
}


class PeerError(Exception):
    """The peer's venv is missing or broken, or a run did not bring every result back."""


# --- the JavaScript the root model "writes" --------------------------------------------------------------------

_JS_DISPATCH = {
    "pool": """
  let next = 0;
  async function worker() {
    while (next < N) {
      const i = next++;
      results[i] = await dispatch(i);
    }
  }
  await Promise.all(Array.from({ length: Math.min(C, N) }, worker));""",
    "all": """
  const settled = await Promise.all(Array.from({ length: N }, (_, i) => dispatch(i)));
  settled.forEach((value, i) => { results[i] = value; });""",
    "batches": """
  for (let start = 0; start < N; start += C) {
    const batch = Array.from({ length: Math.min(C, N - start) }, (_, k) => start + k);
    const settled = await Promise.all(batch.map(dispatch));
    batch.forEach((i, k) => { results[i] = settled[k]; });
  }""",
}


_JS_PROGRAM = """(async () => {
  const N = %(dispatches)d, C = %(concurrency)d;
  const results = new Array(N);
  let inFlight = 0, maxInFlight = 0;
  const dispatch = async (i) => {
    maxInFlight = Math.max(maxInFlight, ++inFlight);
    try {
      return await task({ description: 'item ' + i, subagentType: %(subagent)s, label: 'item ' + i });
    } finally {
      inFlight--;
    }
  };%(dispatch)s
  const ok = results.filter((r, i) => r === 'ok:item ' + i).length;
  return JSON.stringify({ ok, total: results.length, maxInFlight });
})()"""


def fanout_program(dispatches: int, concurrency: int, shape: str) -> str:
    """The JavaScript of one fan-out: N ``task()`` calls, at most C at once in JS, checked and counted in JS."""
    return _JS_PROGRAM % {
        "dispatches": dispatches,
        "concurrency": concurrency,
        "subagent": json.dumps(SUBAGENT),
        "dispatch": _JS_DISPATCH[shape],
    }


# --- child: the measurement, inside the peer's venv ------------------------------------------------------------


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def measure(dispatches: int, concurrency: int, shape: str, warmup: int, repeats: int) -> dict[str, Any]:
    """Build the agent, warm it up, time ``repeats`` fan-outs; returns the child's half of the report."""
    import warnings
    from importlib.metadata import version

    from deepagents import create_deep_agent
    from langchain_core._api import LangChainBetaWarning
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
    from langchain_core.outputs import ChatGeneration, ChatResult
    from langchain_quickjs import CodeInterpreterMiddleware

    rss_after_imports = _rss_mb()
    # CodeInterpreterMiddleware is marked beta; the run measures it as released, the warning says nothing more.
    warnings.filterwarnings("ignore", category=LangChainBetaWarning)

    class InstantModel(BaseChatModel):
        """A chat model that answers at once, natively async (as real provider clients are), with no network.

        ``role == "root"``: first an ``eval`` tool call running ``program``, then the tool's result as text.
        ``role == "worker"``: ``ok:<the task description>``, a final answer in one step.
        """

        role: str
        program: str = ""
        answered: int = 0

        @property
        def _llm_type(self) -> str:
            return "instant-fake"

        def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
            return self

        def _answer(self, messages: list[BaseMessage]) -> AIMessage:
            self.answered += 1
            if self.role == "worker":
                asked = next(m for m in messages if isinstance(m, HumanMessage))
                return AIMessage(content=f"ok:{asked.text}")
            outputs = [m for m in messages if isinstance(m, ToolMessage)]
            if outputs:
                return AIMessage(content=outputs[-1].text)
            call = {"name": "eval", "args": {"code": self.program}, "id": "call_fanout", "type": "tool_call"}
            return AIMessage(content="", tool_calls=[call])

        def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
            return ChatResult(generations=[ChatGeneration(message=self._answer(messages))])

        async def _agenerate(
            self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
        ) -> Any:
            return ChatResult(generations=[ChatGeneration(message=self._answer(messages))])

    def build(n: int) -> tuple[Any, InstantModel]:
        worker_model = InstantModel(role="worker")
        agent = create_deep_agent(
            model=InstantModel(role="root", program=fanout_program(n, concurrency, shape)),
            subagents=[
                {
                    "name": SUBAGENT,
                    "description": "Answers one item; used for fan-out.",
                    "system_prompt": "Answer the item.",
                    "model": worker_model,
                }
            ],
            middleware=[
                CodeInterpreterMiddleware(max_subagent_concurrency=concurrency, timeout=600.0),
            ],
        )
        return agent, worker_model

    async def fan_out(n: int) -> tuple[float, int, int, int]:
        agent, worker_model = build(n)
        started = time.perf_counter()
        state = await agent.ainvoke({"messages": [HumanMessage(content=f"Fan out over {n} items.")]})
        wall = time.perf_counter() - started
        evals = [m for m in state["messages"] if isinstance(m, ToolMessage) and m.name == "eval"]
        match = re.search(r'\{"ok":(\d+),"total":(\d+),"maxInFlight":(\d+)\}', evals[-1].text if evals else "")
        if match is None or int(match.group(2)) != n:
            raise PeerError(f"the eval did not return its count: {evals[-1].text if evals else 'no eval result'!r}")
        return wall, int(match.group(1)), worker_model.answered, int(match.group(3))

    async def run() -> dict[str, Any]:
        if warmup:
            await fan_out(warmup)
        rss_after_warmup = _rss_mb()
        runs = []
        for _ in range(repeats):
            wall, ok, answered, in_flight = await fan_out(dispatches)
            runs.append(
                {
                    "wall_s": round(wall, 4),
                    "ms_per_dispatch": round(wall * 1000 / dispatches, 3),
                    "results_ok": ok,
                    "subagent_model_calls": answered,
                    "js_max_in_flight": in_flight,
                }
            )
        return {"runs": runs, "rss_after_imports_mb": rss_after_imports, "rss_after_warmup_mb": rss_after_warmup}

    report = asyncio.run(run())
    return {
        **report,
        "peak_rss_mb": _peak_rss_mb(),
        "versions": {name: version(name) for name in VERSIONED} | {"python": sys.version.split()[0]},
    }


# --- parent: venv, child process, report -----------------------------------------------------------------------


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def setup(venv: Path) -> None:
    """Create the peer's venv and install the pinned requirements; a no-op when it already matches them."""
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    stamp = venv / STAMP
    if venv_python(venv).exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        print(f"peer venv {venv} is up to date", file=sys.stderr)
        return
    if not venv_python(venv).exists():
        print(f"creating peer venv {venv}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    print(f"installing {REQUIREMENTS.name} into {venv}", file=sys.stderr)
    subprocess.run(
        [str(venv_python(venv)), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
        check=True,
    )
    stamp.write_text(wanted + "\n")


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    """Run the measurement in a fresh process of the peer's venv and return its JSON."""
    python = venv_python(args.venv)
    if not python.exists():
        raise PeerError(f"no peer venv at {args.venv}; run: python {Path(__file__).name} --setup")
    argv = [
        str(python),
        str(Path(__file__).resolve()),
        "--child",
        *("--dispatches", str(args.dispatches), "--concurrency", str(args.concurrency)),
        *("--shape", args.shape, "--warmup", str(args.warmup), "--repeats", str(args.repeats)),
    ]
    completed = subprocess.run(
        argv, stdout=subprocess.PIPE, text=True, env=os.environ | CHILD_ENV, timeout=args.timeout, check=False
    )
    if completed.returncode != 0:
        raise PeerError(f"the peer run exited {completed.returncode} (its stderr is above)")
    return json.loads(completed.stdout)


def report(args: argparse.Namespace, child: dict[str, Any]) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.support import machine_facts

    runs = child["runs"]
    best = min(runs, key=lambda run: run["wall_s"])
    return {
        "peer": PEER,
        "versions": child["versions"],
        "dispatches": args.dispatches,
        "concurrency": args.concurrency,
        "shape": args.shape,
        "warmup_dispatches": args.warmup,
        "wall_s": best["wall_s"],
        "ms_per_dispatch": best["ms_per_dispatch"],
        "peak_rss_mb": child["peak_rss_mb"],
        "rss_after_imports_mb": child["rss_after_imports_mb"],
        "rss_after_warmup_mb": child["rss_after_warmup_mb"],
        "results_ok": min(run["results_ok"] for run in runs),
        "runs": runs,
        "durable": False,
        "machine": machine_facts(Path(tempfile.gettempdir())),
    }


def print_table(result: dict[str, Any]) -> None:
    out = sys.stderr
    versions = ", ".join(f"{name} {v}" for name, v in result["versions"].items())
    print(f"{result['peer']} ({versions})", file=out)
    print(
        f"N={result['dispatches']} C={result['concurrency']} shape={result['shape']} "
        f"warm-up={result['warmup_dispatches']} durable={result['durable']}",
        file=out,
    )
    print(f"{'run':>4} {'wall s':>9} {'ms/dispatch':>12} {'results ok':>11}", file=out)
    for index, run in enumerate(result["runs"], 1):
        ok = f"{run['results_ok']}/{result['dispatches']}"
        print(f"{index:>4} {run['wall_s']:>9.3f} {run['ms_per_dispatch']:>12.3f} {ok:>11}", file=out)
    print(
        f"peak RSS {result['peak_rss_mb']} MB (after imports {result['rss_after_imports_mb']} MB, "
        f"after warm-up {result['rss_after_warmup_mb']} MB)",
        file=out,
    )


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", action="store_true", help="create or update the peer venv, then exit")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help=f"peer venv (default {DEFAULT_VENV})")
    parser.add_argument("--dispatches", "-n", type=positive, default=1000, help="task() calls per fan-out")
    parser.add_argument("--concurrency", "-c", type=positive, default=64, help="task() calls in flight at most")
    parser.add_argument("--shape", choices=SHAPES, default="pool", help="how the JavaScript bounds concurrency")
    parser.add_argument("--warmup", type=int, default=None, help="dispatches of the unmeasured first fan-out")
    parser.add_argument("--repeats", type=positive, default=1, help="measured fan-outs (the best is reported)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before the peer run is killed")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = args.concurrency
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    args.venv = args.venv.expanduser().resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.dispatches, args.concurrency, args.shape, args.warmup, args.repeats)))
        return 0
    try:
        if args.setup:
            setup(args.venv)
            return 0
        result = report(args, run_child(args))
    except (PeerError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        print(f"peer_fanout: {error}", file=sys.stderr)
        return 1
    print_table(result)
    if args.json:
        print(json.dumps(result, indent=2))
    if result["results_ok"] != args.dispatches:
        print(f"peer_fanout: only {result['results_ok']} of {args.dispatches} results came back", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
