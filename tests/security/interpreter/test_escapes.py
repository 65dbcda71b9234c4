"""Programs that try to get out of the interpreter or past its limits: every attempt is contained.

Each runs through the real Monty workers with the stubs and prelude an agent's program gets, and two
host functions standing in for the engine (a tool bridge that records what reached it, and log).
Contained means: the attempt fails (a type error before anything runs, an error raised in the program,
or the program stopped), the host saw nothing it should not have, and the interpreter still works.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from corral.orchestration.interpreter import HostCallError, Interpreter, Limits, Outcome
from corral.orchestration.stubs import LOG_CALL, TOOL_CALL, prelude, stubs

pytestmark = pytest.mark.anyio

ALLOWED = {
    "read_file": {"properties": {"path": {"type": "string"}}, "required": ["path"]},
}
LIMITS = Limits(cpu_s=1.0, memory_mb=64, recursion_depth=100, wall_s=5.0, host_calls=20, output_chars=1_000)


class Host:
    """The host side: what reached it, by tool name."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.logs: list[str] = []

    async def tool(self, name: str, arguments: dict[str, Any]) -> str:
        if name not in ALLOWED:
            raise HostCallError(f"tool {name!r} is not available to programs")
        self.calls.append((name, arguments))
        return "content"

    async def log(self, text: str) -> None:
        self.logs.append(text)


@pytest.fixture(scope="module")
def interpreter() -> Iterator[Interpreter]:
    """One warm pool for the module (its workers start on the first program), closed at the end."""
    interpreter = Interpreter()
    try:
        yield interpreter
    finally:
        interpreter.close()


async def run(interpreter: Interpreter, program: str, host: Host, limits: Limits = LIMITS) -> Outcome:
    return await interpreter.run(
        program,
        functions={TOOL_CALL: host.tool, LOG_CALL: host.log},
        prelude=prelude(ALLOWED),
        stubs=stubs(ALLOWED),
        limits=limits,
    )


REFUSED = [
    # modules that would reach the host: not there (Monty asks the host, which knows none)
    ("import subprocess", "not defined"),
    ("import socket", "not defined"),
    ("import ctypes", "not defined"),
    ("__import__('os')", "__import__"),
    ("open('/etc/shadow').read()", "open"),
    ("import os\nos.system('id')", "system"),
    ("import os\nos.environ['HOME']", "environ"),
    # filesystem calls become host calls the host does not answer
    ("import os\nos.listdir('/')", "not defined"),
    ("from pathlib import Path\nPath('/root').exists()", "not defined"),
    ("from pathlib import Path\nPath('/etc/passwd').read_text()", "not defined"),
    # introspection
    ("().__class__.__bases__[0].__subclasses__()", "__class__"),
    ("getattr(1, '__class__')", "getattr"),
    ("globals()", "globals"),
    ("vars()", "vars"),
    ("exec(\"open('/etc/passwd')\")", "open"),
    ("compile('1', 'x', 'eval')", "compile"),
    # the bridges: only allowlisted tools, only through the host's check
    ("await tools.execute(command='id')", "execute"),
    ("await _corral_tool('execute', {'command': 'id'})", "_corral_tool"),
    ("tools.__dict__", "__dict__"),
]


@pytest.mark.parametrize(("program", "said"), REFUSED, ids=[p for p, _ in REFUSED])
async def test_reaching_the_host_is_refused(interpreter: Interpreter, program: str, said: str) -> None:
    host = Host()
    outcome = await run(interpreter, program, host)
    assert not outcome.ok, outcome.text()
    assert said in (outcome.error or ""), outcome.text()
    assert host.calls == []


async def test_the_host_checks_the_tool_even_past_the_type_checker(interpreter: Interpreter) -> None:
    """Type checking is a convenience: a program that reaches the bridge directly meets the host's allowlist."""
    host = Host()
    outcome = await run(interpreter, "x = eval('_corral_tool')\nawait x('execute', {'command': 'id'})", host)
    assert not outcome.ok and host.calls == []


@pytest.mark.slow  # waits out real time limits (a second each); in the full suite
@pytest.mark.parametrize(
    ("program", "said"),
    [
        ("while True:\n    pass", "interpreter time limit of 1 s"),
        ("x = []\nwhile True:\n    x.append('a' * 1000000)", "memory limit of 64 MB"),
        ("'a' * (10 ** 10)", "memory limit"),
        (
            "try:\n    while True:\n        pass\nexcept BaseException:\n    print('caught')",
            "interpreter time limit",
        ),  # a limit cannot be caught
    ],
)
async def test_runaway_programs_are_stopped(interpreter: Interpreter, program: str, said: str) -> None:
    outcome = await run(interpreter, program, Host())
    assert not outcome.ok and outcome.error_kind == "limit", outcome.text()
    assert said in (outcome.error or "")
    assert "caught" not in outcome.stdout
    after = await run(interpreter, "1 + 1", Host())  # the pool still works
    assert after.ok and after.value == "2"


async def test_deep_recursion_is_an_error_not_a_crash(interpreter: Interpreter) -> None:
    outcome = await run(interpreter, "def f(n):\n    return f(n + 1)\nf(0)", Host())
    assert not outcome.ok and "RecursionError" in (outcome.error or "")


async def test_huge_output_is_cut(interpreter: Interpreter) -> None:
    outcome = await run(interpreter, "for i in range(100000):\n    print('x' * 100)", Host())
    assert outcome.ok
    assert len(outcome.stdout) < 1_200 and "more characters of output dropped (limit 1,000)" in outcome.stdout


async def test_too_many_host_calls_raise_inside_the_program(interpreter: Interpreter) -> None:
    host = Host()
    program = (
        "ok = 0\nfor i in range(50):\n    try:\n        await tools.read_file(path=str(i))\n        ok += 1\n"
        "    except ToolError as e:\n        print(e)\n        break\nok"
    )
    outcome = await run(interpreter, program, host)
    assert outcome.ok and outcome.value == "20"
    assert "limit: this program may make 20 host calls" in outcome.stdout
    assert len(host.calls) == 20


@pytest.mark.slow  # waits out a real time limit: the full suite runs it, the fast lane does not
async def test_wall_clock_counts_time_in_host_calls(interpreter: Interpreter) -> None:
    import asyncio

    class Slow(Host):
        async def tool(self, name: str, arguments: dict[str, Any]) -> str:
            await asyncio.sleep(10)
            return "late"

    slow = Limits(cpu_s=1.0, memory_mb=64, wall_s=0.5, host_calls=20)
    outcome = await run(interpreter, "await tools.read_file(path='a')", Slow(), slow)
    assert not outcome.ok and outcome.error_kind == "limit"
    assert "wall-clock limit of 0.5 s" in (outcome.error or "")


async def test_no_clock_and_no_entropy_of_its_own(interpreter: Interpreter) -> None:
    program = "import time, random\n(time.time(), random.random())"
    first, second = await run(interpreter, program, Host()), await run(interpreter, program, Host())
    assert first.ok and first.value == second.value  # frozen clock, seeded random: a replay sees the same
    assert first.value is not None and first.value.startswith("[946684800.0,")


async def test_a_failed_tool_raises_a_catchable_tool_error(interpreter: Interpreter) -> None:
    class Failing(Host):
        async def tool(self, name: str, arguments: dict[str, Any]) -> str:
            raise HostCallError("no such file: x")

    program = "try:\n    await tools.read_file(path='x')\nexcept ToolError as e:\n    print('caught:', e)"
    outcome = await run(interpreter, program, Failing())
    assert outcome.ok and outcome.stdout.strip() == "caught: no such file: x"


async def test_a_large_fan_out_does_not_meet_montys_default_of_1000_suspensions(interpreter: Interpreter) -> None:
    host = Host()
    wide = Limits(cpu_s=5.0, memory_mb=256, wall_s=60.0, host_calls=1_500)
    program = "r = await asyncio.gather(*[tools.read_file(path=str(i)) for i in range(1200)])\nlen(r)"
    outcome = await run(interpreter, program, host, wide)
    assert outcome.ok and outcome.value == "1200", outcome.text()
    assert len(host.calls) == 1200
