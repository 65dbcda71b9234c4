"""Root-context tokens: a task over N items done by one program versus by a plain tool-call loop.

    .venv/bin/python bench/root_tokens.py [--items 100 300] [--batch 10] [--json]

The same task at each N — "how many of these N files mention TODO, and which" — done twice by corral's
native engine inside a real ``Runtime``, with pydantic-ai's in-process ``FunctionModel`` playing the model
(the tokens counted are the characters of the messages each root model call is sent, JSON-encoded as
pydantic-ai holds them, over four: the same proxy for both ways, close to what a tokenizer gives for
English and code):

- **program**: the root model's first answer is one ``eval`` whose program lists the files (``glob``, a
  hundred at a time), reads them all
  with ``asyncio.gather`` and returns the count and the names of the matching ones (a tenth of the files);
  its second answer reports that;
- **loop**: the root model reads the files itself, ``--batch`` ``read_file`` calls per answer (parallel tool
  calls), every result landing in its context; then it answers.

Reported per way and N: the root's model calls, its input tokens summed over them, and the input tokens
of its last call (how full its context got). The growth per item is the change in summed input tokens
from the smallest N to the largest, per added item, as a share of the smallest N's figure. Issue 11's
target: under 1 % per item for the program.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = "corral.bench.root_tokens/1"
TARGET_GROWTH_PCT_PER_ITEM = 1.0

PROGRAM = """
# glob lists at most 200 files a call: one call per hundred (item-00.., item-01.., ...)
groups = await asyncio.gather(*[tools.glob(pattern="items/item-0" + str(d) + "*.txt") for d in range(10)])
files = sorted([f for g in groups for f in g.split() if f.endswith(".txt")])
texts = await asyncio.gather(*[tools.read_file(path=f) for f in files])
hits = [f for f, t in zip(files, texts) if "TODO" in t]
{"files": len(files), "with_todo": len(hits), "names": hits}
"""


def write_items(repo: Path, n: int) -> None:
    (repo / "items").mkdir(parents=True)
    for i in range(n):
        body = "TODO: check the limits\n" if i % 10 == 0 else "nothing to do here\n"
        (repo / "items" / f"item-{i:04d}.txt").write_text(f"item {i}\n" + body * 8)


def measure(items: list[int], batch: int) -> list[dict[str, Any]]:
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench-unused")
    os.environ.setdefault("PYDANTIC_AI_NO_BANNER", "1")
    from pydantic_ai.messages import (
        ModelMessage,
        ModelMessagesTypeAdapter,
        ModelRequest,
        ModelResponse,
        TextPart,
        ToolCallPart,
        ToolReturnPart,
    )
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    from corral.engines.native import NativeEngine
    from corral.events import ModelResponded, ToolReturned
    from corral.runtime import Runtime
    from corral.spec import AgentSpec
    from corral.store import RunStatus, Store

    sent: list[int] = []  # per root model call: its messages' characters / 4

    def counted(respond: Any) -> Any:
        def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
            sent.append(len(json.dumps(ModelMessagesTypeAdapter.dump_python(messages, mode="json"))) // 4)
            return respond(messages, info)

        return model

    def program_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if any(isinstance(p, ToolReturnPart) for m in messages if isinstance(m, ModelRequest) for p in m.parts):
            return ModelResponse(parts=[TextPart("Counted: see the eval's result.")])
        return ModelResponse(parts=[ToolCallPart("eval", {"program": PROGRAM})])

    def loop_model(n: int) -> Any:
        def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
            done = sum(1 for m in messages if isinstance(m, ModelResponse))
            start = done * batch
            if start >= n:
                return ModelResponse(parts=[TextPart("Counted every file that mentions TODO.")])
            calls = [
                ToolCallPart("read_file", {"path": f"items/item-{i:04d}.txt"}, tool_call_id=f"c{i}")
                for i in range(start, min(start + batch, n))
            ]
            return ModelResponse(parts=calls)

        return respond

    async def one(way: str, n: int) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="corral-bench-tokens-") as tmp:
            repo = Path(tmp) / "repo"
            write_items(repo, n)
            store = Store.open(home=Path(tmp) / "home")
            sent.clear()
            model = FunctionModel(counted(program_model if way == "program" else loop_model(n)))
            tools = ["glob", "read_file", "eval"] if way == "program" else ["glob", "read_file"]
            spec = AgentSpec.model_validate(
                {
                    "name": "counter",
                    "model": "openai:gpt-5.2",
                    "tools": tools,
                    "sandbox": "local",
                    "budget": {"max_turns": None},
                    "programs": {"host_calls": n + 10},
                }
            )
            try:
                async with Runtime(store, engines={"native": NativeEngine(model=model)}) as runtime:
                    record = await runtime.run(spec, f"Which of the {n} files in items/ mention TODO?", repo)
                if record.status is not RunStatus.SUCCEEDED:
                    raise RuntimeError(f"{way} at N={n} failed: {record.error}")
                events = [e.event for e in store.events(record.id)]
                calls = [e for e in events if isinstance(e, ModelResponded)]
                if way == "program":  # the program did the whole task: every file read, every TODO found
                    (result,) = [e for e in events if isinstance(e, ToolReturned) and e.tool == "eval"]
                    expected = f'"files": {n}, "with_todo": {(n + 9) // 10}'
                    if expected not in result.text:
                        raise RuntimeError(f"the program at N={n} got it wrong: {result.text[:300]}")
            finally:
                store.close()
        assert len(calls) == len(sent)
        return {
            "way": way,
            "items": n,
            "model_calls": len(calls),
            "input_tokens": sum(sent),
            "last_call_input_tokens": sent[-1],
            "pydantic_ai_estimate": sum(c.input_tokens for c in calls),
        }

    async def main() -> list[dict[str, Any]]:
        return [await one(way, n) for way in ("program", "loop") for n in items]

    return asyncio.run(main())


def growth(rows: list[dict[str, Any]], way: str) -> float:
    """Summed input tokens: % growth per added item, from the smallest N to the largest."""
    mine = sorted((r for r in rows if r["way"] == way), key=lambda r: r["items"])
    low, high = mine[0], mine[-1]
    return 100 * (high["input_tokens"] - low["input_tokens"]) / low["input_tokens"] / (high["items"] - low["items"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[100, 300], help="task sizes (at least two)")
    parser.add_argument("--batch", type=int, default=10, help="read_file calls per answer in the loop")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    args = parser.parse_args(argv)
    if len(set(args.items)) < 2 or min(args.items) < 1 or args.batch < 1:
        parser.error("--items needs two or more different sizes of at least 1, --batch at least 1")
    rows = measure(sorted(set(args.items)), args.batch)
    sys.path.insert(0, str(ROOT))
    from bench.support import machine_facts

    result = {
        "schema": SCHEMA,
        "command": " ".join(["python", "bench/root_tokens.py", *sys.argv[1:]]),
        "batch": args.batch,
        "rows": rows,
        "growth_pct_per_item": {way: round(growth(rows, way), 4) for way in ("program", "loop")},
        "target_pct_per_item": TARGET_GROWTH_PCT_PER_ITEM,
        "machine": machine_facts(Path(tempfile.gettempdir())),
    }
    result["target_met"] = result["growth_pct_per_item"]["program"] < TARGET_GROWTH_PCT_PER_ITEM
    out = sys.stderr
    print(f"{'way':8} {'items':>6} {'calls':>6} {'input tokens':>13} {'last call':>10}", file=out)
    for row in rows:
        print(
            f"{row['way']:8} {row['items']:>6} {row['model_calls']:>6} {row['input_tokens']:>13,} "
            f"{row['last_call_input_tokens']:>10,}",
            file=out,
        )
    for way, pct in result["growth_pct_per_item"].items():
        print(f"{way}: input tokens grow {pct:.3f} % per item", file=out)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
