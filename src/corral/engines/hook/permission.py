"""corral's permission hook: an engine's ``PreToolUse`` hook, run inside its sandbox before each tool call.

Claude Code and Codex run it with the call on stdin (``tool_name``, ``tool_input``, ``tool_use_id``) as
``python3 -I permission.py URL KEY``. It asks corral's model gateway at ``URL`` (with the run's
gateway key) what the run's policy says — the gateway journals the decision, and waits for a person
when policy asks one — and prints the answer in the hooks' shared format. Anything that goes wrong
(no answer, a malformed one) blocks the call: exit code 2, the reason on stderr.

Standard library only, no import from corral: it runs under the sandbox's system Python, isolated
(``-I``) from the workspace. It reaches the gateway through the sandbox's egress proxy
(``HTTP_PROXY``) where the sandbox has its own network, directly where it shares the host's.
"""

from __future__ import annotations

import json
import sys
import urllib.request

DECISIONS = ("allow", "deny")


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("corral permission hook: usage: permission.py URL KEY", file=sys.stderr)
        return 2
    url, key = argv[1], argv[2]
    try:
        call = json.load(sys.stdin)
        if not isinstance(call, dict):
            raise ValueError("the hook's input is not a JSON object")
        body = json.dumps(
            {"tool": call.get("tool_name"), "input": call.get("tool_input"), "id": call.get("tool_use_id")}
        ).encode()
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        request = urllib.request.Request(url, data=body, method="POST", headers=headers)
        # No timeout: policy may be waiting for a person; the engine's own hook timeout bounds the wait.
        with urllib.request.urlopen(request) as response:
            answer = json.loads(response.read())
        decision, reason = answer["decision"], str(answer.get("reason") or "")
        if decision not in DECISIONS:
            raise ValueError(f"unknown decision {decision!r}")
    except Exception as exc:  # whatever failed, the call is blocked and says why
        print(f"corral: the call is blocked: no decision from corral's policy ({exc})", file=sys.stderr)
        return 2
    output = {"hookEventName": "PreToolUse", "permissionDecision": decision, "permissionDecisionReason": reason}
    print(json.dumps({"hookSpecificOutput": output}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
