// corral's permission plugin for OpenCode: before each tool call, the run's policy decides.
//
// OpenCode loads it from the read-only hook directory corral mounts into the sandbox. It hands the call
// to the permission hook Claude Code and Codex run (permission.py, beside it), which asks corral through
// the model gateway, and refuses the call (an error the model reads) unless policy allows it. A call
// policy asks a person about waits here, without holding up the rest of OpenCode.
import { spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const HOOK = join(dirname(fileURLToPath(import.meta.url)), "permission.py");

function ask(call) {
  const { CORRAL_PYTHON, CORRAL_PERMISSION_URL, CORRAL_GATEWAY_KEY } = process.env;
  return new Promise((resolve) => {
    const hook = spawn(CORRAL_PYTHON, ["-I", HOOK, CORRAL_PERMISSION_URL, CORRAL_GATEWAY_KEY]);
    let stdout = "";
    let stderr = "";
    hook.stdout.on("data", (data) => (stdout += data));
    hook.stderr.on("data", (data) => (stderr += data));
    hook.on("error", (error) => resolve({ decision: "deny", reason: `corral: cannot run the permission hook (${error})` }));
    hook.on("close", (code) => {
      if (code !== 0) return resolve({ decision: "deny", reason: stderr.trim() || `corral: the permission hook failed (${code})` });
      try {
        const answer = JSON.parse(stdout).hookSpecificOutput;
        resolve({ decision: answer.permissionDecision, reason: answer.permissionDecisionReason });
      } catch (error) {
        resolve({ decision: "deny", reason: `corral: the permission hook's answer is not JSON (${error})` });
      }
    });
    hook.stdin.end(JSON.stringify(call));
  });
}

export const CorralPolicy = async () => ({
  "tool.execute.before": async (input, output) => {
    const { decision, reason } = await ask({ tool_name: input.tool, tool_input: output.args, tool_use_id: input.callID });
    if (decision !== "allow") throw new Error(reason);
  },
});
