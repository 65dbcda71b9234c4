"""Fan-out benchmark: what one ``task()`` dispatch costs in corral, durable, next to the peer in the same run.

    .venv/bin/python bench/fanout.py [--dispatches N] [--concurrency C] [--repeats R] [--no-peer] [--json]

corral's side, in a fresh process (``--child``): a real ``Runtime`` on a temporary store (SQLite, DBOS,
the journal: everything durable as in production) runs an agent whose model is pydantic-ai's in-process
``FunctionModel``, handed to the native engine through ``Runtime(store, engines={"native": ...})``, so no
HTTP is measured and the model answers instantly:

- the root model's first answer is one ``eval`` call whose program dispatches N subagents at once,
  ``await asyncio.gather(*[task("item " + str(i), agent="worker") for i in range(N)])``, checks each
  answer (``"ok:item i"``) and returns how many came back right; its second answer ends the run;
- the ``worker`` subagent type has no tools, so each child is a *light* child: a run row in the store,
  its journal (``run.started``, the model call, ``run.finished``), its result; its parent's
  ``max_concurrent = C`` bounds how many run at once;
- the root's sandbox is the ``local`` backend (one per run, not per dispatch; what a dispatch costs does
  not depend on it).

Per measured run (after ``--warmup`` dispatches in an unmeasured run): the wall time of the ``eval`` call
(from its ``tool.result`` event), wall / N as the cost of one dispatch, how many answers came back right,
and that the store holds N finished child runs with their journals (the durability the figure pays for).
The process's peak RSS (``ru_maxrss``) and its RSS after imports and after the warm-up.

The peer's side is ``bench/peer_fanout.py`` (deepagents + langchain-quickjs in its own venv, made with
``python bench/peer_fanout.py --setup``), run with the same N and C in the same invocation. The target of
issue 11: at most 3.5 ms per dispatch for corral with durability on (at least 3x faster than the peer).
Figures go to stderr as a table; ``--json`` prints the report on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = "corral.bench.fanout/1"
TARGET_MS_PER_DISPATCH = 3.5
TARGET_SPEEDUP = 3.0

PROGRAM = """
answers = await asyncio.gather(*[task("item " + str(i), agent="worker") for i in range({n})])
sum(1 for i, answer in enumerate(answers) if answer == "ok:item " + str(i))
"""


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# -- corral's side, in its own process ------------------------------------------------------------------


def measure(dispatches: int, concurrency: int, warmup: int, repeats: int) -> dict[str, Any]:
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench-unused")  # the model is in-process; the spec names one
    os.environ.setdefault("PYDANTIC_AI_NO_BANNER", "1")
    from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, UserPromptPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    from corral.engines.native import NativeEngine
    from corral.events import ToolReturned
    from corral.runtime import Runtime
    from corral.spec import AgentSpec
    from corral.store import RunStatus, Store

    rss_after_imports = _rss_mb()

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if not any(tool.name == "eval" for tool in info.function_tools):  # a worker: answer its task
            first = messages[0]
            assert isinstance(first, ModelRequest)
            prompt = next(p.content for p in first.parts if isinstance(p, UserPromptPart))
            return ModelResponse(parts=[TextPart(f"ok:{prompt}")])
        last = messages[-1]
        if isinstance(last, ModelRequest) and any(getattr(p, "tool_name", None) == "eval" for p in last.parts):
            return ModelResponse(parts=[TextPart("done")])
        n = int(str(next(p.content for p in messages[0].parts if isinstance(p, UserPromptPart))).split()[-1])  # type: ignore[union-attr]
        return ModelResponse(parts=[ToolCallPart("eval", {"program": PROGRAM.format(n=n)})])

    def spec(n: int) -> AgentSpec:
        worker = AgentSpec(name="worker", model="openai:gpt-5.2", tools=(), instructions="Answer.")
        return AgentSpec.model_validate(
            {
                "name": "lead",
                "model": "openai:gpt-5.2",
                "tools": ["eval"],
                "sandbox": "local",
                "scan_secrets": True,
                "budget": {"max_turns": None},
                "programs": {
                    "max_dispatches": n,
                    "max_run_dispatches": n,
                    "max_concurrent": concurrency,
                    "host_calls": n + 10,
                    "wall_s": 3600,
                },
                "subagents": {"worker": worker},
            }
        )

    async def fan_out(runtime: Runtime, store: Store, repo: Path, n: int) -> dict[str, Any]:
        started = time.perf_counter()
        record = await runtime.run(spec(n), f"fan out {n}", repo)
        wall = time.perf_counter() - started
        if record.status is not RunStatus.SUCCEEDED:
            raise RuntimeError(f"the fan-out run failed: {record.error}")
        events = store.events(record.id)
        (evaluated,) = [e.event for e in events if isinstance(e.event, ToolReturned) and e.event.tool == "eval"]
        children = store.children(record.id)
        ended = sum(1 for c in children if c.status is RunStatus.SUCCEEDED)
        journals = sum(1 for c in children[:20] if store.events(c.id)[-1].type == "run.finished")
        eval_s = (evaluated.duration_ms or 0.0) / 1000
        return {
            "eval_s": round(eval_s, 4),
            "run_s": round(wall, 4),
            "ms_per_dispatch": round(eval_s * 1000 / n, 3),
            "results_ok": int(evaluated.text.rsplit("value: ", 1)[-1]) if evaluated.ok else 0,
            "children_stored": ended,
            "journals_checked": journals,
        }

    async def main() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="corral-bench-fanout-") as tmp:
            repo = Path(tmp) / "repo"
            repo.mkdir()
            (repo / "README.md").write_text("fan-out benchmark\n")
            store = Store.open(home=Path(tmp) / "home")
            try:
                engines = {"native": NativeEngine(model=FunctionModel(respond))}
                async with Runtime(store, engines=engines) as runtime:
                    if warmup:
                        await fan_out(runtime, store, repo, warmup)
                    rss_after_warmup = _rss_mb()
                    runs = [await fan_out(runtime, store, repo, dispatches) for _ in range(repeats)]
            finally:
                store.close()
        from importlib.metadata import version

        return {
            "versions": {name: version(name) for name in ("dbos", "pydantic-ai-slim", "pydantic-monty")},
            "runs": runs,
            "peak_rss_mb": _peak_rss_mb(),
            "rss_after_imports_mb": rss_after_imports,
            "rss_after_warmup_mb": rss_after_warmup,
        }

    return asyncio.run(main())


# -- the parent: both sides, one report ------------------------------------------------------------------


def run_corral(args: argparse.Namespace) -> dict[str, Any]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child"]
    argv += ["--dispatches", str(args.dispatches), "--concurrency", str(args.concurrency)]
    argv += ["--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, timeout=args.timeout, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the corral fan-out exited {done.returncode} (its stderr is above)")
    child = json.loads(done.stdout)
    wrong = [
        run
        for run in child["runs"]
        if run["results_ok"] != args.dispatches or run["children_stored"] != args.dispatches
    ]
    if wrong:
        raise SystemExit(f"the corral fan-out gave wrong results: {wrong[0]}")
    best = min(child["runs"], key=lambda run: run["eval_s"])
    return {**child, "ms_per_dispatch": best["ms_per_dispatch"], "eval_s": best["eval_s"], "durable": True}


def run_peer(args: argparse.Namespace) -> dict[str, Any] | None:
    argv = [sys.executable, str(ROOT / "bench" / "peer_fanout.py"), "--json"]
    argv += ["--dispatches", str(args.dispatches), "--concurrency", str(args.concurrency)]
    argv += ["--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, timeout=args.timeout, check=False)
    if done.returncode != 0:
        print(f"the peer's fan-out exited {done.returncode}; see its message above", file=sys.stderr)
        return None
    return json.loads(done.stdout)


def report(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from bench.support import machine_facts

    corral = run_corral(args)
    peer = None if args.no_peer else run_peer(args)
    speedup = None
    if peer is not None and corral["ms_per_dispatch"]:
        speedup = round(peer["ms_per_dispatch"] / corral["ms_per_dispatch"], 2)
    return {
        "schema": SCHEMA,
        "command": " ".join(["python", "bench/fanout.py", *sys.argv[1:]]),
        "dispatches": args.dispatches,
        "concurrency": args.concurrency,
        "warmup_dispatches": args.warmup,
        "corral": corral,
        "peer": peer,
        "speedup": speedup,
        "targets": {
            "ms_per_dispatch": TARGET_MS_PER_DISPATCH,
            "met": corral["ms_per_dispatch"] <= TARGET_MS_PER_DISPATCH,
            "speedup": TARGET_SPEEDUP,
            "speedup_met": None if speedup is None else speedup >= TARGET_SPEEDUP,
        },
        "machine": machine_facts(Path(tempfile.gettempdir())),
    }


def print_table(result: dict[str, Any]) -> None:
    out = sys.stderr
    print(
        f"fan-out: N={result['dispatches']} C={result['concurrency']} warm-up={result['warmup_dispatches']}", file=out
    )
    print(f"{'':24} {'ms/dispatch':>12} {'wall s':>8} {'peak RSS MB':>12} {'ok':>10} durable", file=out)
    rows = [("corral (light children)", result["corral"])]
    if result["peer"] is not None:
        rows.append(("deepagents+quickjs", result["peer"]))
    for name, side in rows:
        wall = side.get("eval_s", side.get("wall_s"))
        ok = min(run["results_ok"] for run in side["runs"])
        print(
            f"{name:24} {side['ms_per_dispatch']:>12.3f} {wall:>8.3f} {side['peak_rss_mb']:>12} "
            f"{ok:>5}/{result['dispatches']:<4} {side['durable']}",
            file=out,
        )
    if result["speedup"] is not None:
        print(f"corral is {result['speedup']}x the peer's speed per dispatch", file=out)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dispatches", "-n", type=positive, default=1000, help="task() calls per fan-out")
    parser.add_argument("--concurrency", "-c", type=positive, default=64, help="children running at once at most")
    parser.add_argument("--warmup", type=int, default=64, help="dispatches of the unmeasured first fan-out")
    parser.add_argument("--repeats", type=positive, default=3, help="measured fan-outs (the best is reported)")
    parser.add_argument("--no-peer", action="store_true", help="measure corral only")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before a side is killed")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.dispatches, args.concurrency, args.warmup, args.repeats)))
        return 0
    result = report(args)
    print_table(result)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
