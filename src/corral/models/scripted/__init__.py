"""The scripted model: a test double speaking real model APIs on 127.0.0.1, answering from a script.

``script`` holds the script format, ``server`` the HTTP server, one module per API its wire format
(``openai_chat``, ``openai_responses``, ``anthropic``, sharing ``wire``), and ``served`` the servers a
process runs for ``scripted:`` models in agent specs.
"""

from __future__ import annotations

from corral.models.scripted.script import (
    SCRIPT_SUFFIXES,
    Failure,
    Route,
    Script,
    ScriptUsage,
    ToolCall,
    Turn,
    bundled_scripts,
    load_script,
    script_file,
)
from corral.models.scripted.served import PROCESS_MODELS, ScriptedModels
from corral.models.scripted.server import (
    WIRES,
    Policy,
    RecordedRequest,
    ScriptedServer,
    ensure_loopback_up,
    main,
    read_recording,
    serve,
)
from corral.models.scripted.wire import (
    Api,
    HistoryToolCall,
    Message,
    ScriptedRequest,
    ToolResult,
    ToolSpec,
)

__all__ = [
    "PROCESS_MODELS",
    "SCRIPT_SUFFIXES",
    "WIRES",
    "Api",
    "Failure",
    "HistoryToolCall",
    "Message",
    "Policy",
    "RecordedRequest",
    "Route",
    "Script",
    "ScriptUsage",
    "ScriptedModels",
    "ScriptedRequest",
    "ScriptedServer",
    "ToolCall",
    "ToolResult",
    "ToolSpec",
    "Turn",
    "bundled_scripts",
    "ensure_loopback_up",
    "load_script",
    "main",
    "read_recording",
    "script_file",
    "serve",
]
