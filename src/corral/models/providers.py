"""Turning a spec's model string into a pydantic-ai model client (retries are corral's, not the SDK's)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic_ai.models import Model

from corral.errors import ModelConfigError

SUPPORTED_PROVIDERS = {
    "openai": ("OpenAI Responses API", "OPENAI_API_KEY"),
    "openai-chat": ("OpenAI Chat Completions API (and any OpenAI-compatible server)", "OPENAI_API_KEY"),
    "anthropic": ("Anthropic Messages API", "ANTHROPIC_API_KEY"),
    "scripted": ("corral's scripted model, served by corral itself from a script (no key, no network)", ""),
}

#: The key sent to a local server that needs none (vLLM, Ollama, llama.cpp, the scripted model).
NO_KEY = "not-needed"


@dataclass(frozen=True)
class ModelTarget:
    """What a run talks to: provider, model name, endpoint and where its key comes from.

    A ``scripted`` target has no endpoint until :func:`build_model` serves its ``script`` file.
    """

    provider: str
    name: str
    base_url: str | None
    api_key_env: str
    script: Path | None = None

    @property
    def ref(self) -> str:
        return f"{self.provider}:{self.name}"

    @property
    def pricing_provider(self) -> str:
        # genai-prices knows no "scripted" provider, so a scripted model is never priced as a real one.
        return self.provider if self.provider in ("anthropic", "scripted") else "openai"


def resolve_target(model: str, *, base_url: str | None = None, api_key_env: str | None = None) -> ModelTarget:
    provider, _, name = model.partition(":")
    if provider not in SUPPORTED_PROVIDERS:
        supported = ", ".join(f"{p}: ({d})" for p, (d, _) in SUPPORTED_PROVIDERS.items())
        raise ModelConfigError(
            f"unknown model provider {provider!r} in {model!r}",
            hint=f"use one of {supported}; for vLLM/Ollama/llama.cpp use openai-chat:<model> with base_url",
        )
    if not name:
        raise ModelConfigError(f"model {model!r} has no model name after the provider")
    if provider == "scripted":
        return _scripted_target(name, base_url)
    if base_url is not None:
        parsed = urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ModelConfigError(f"base_url {base_url!r} is not an http(s) URL")
    return ModelTarget(provider, name, base_url, api_key_env or SUPPORTED_PROVIDERS[provider][1])


def _scripted_target(name: str, base_url: str | None) -> ModelTarget:
    from corral.models.scripted import load_script, script_file

    if base_url is not None:
        raise ModelConfigError(
            f"model 'scripted:{name}' is served by corral itself and takes no base_url (got {base_url!r})",
            hint="remove base_url, or reach a scripted server you run yourself (corral model serve) "
            "with openai-chat:<model> and base_url",
        )
    path = script_file(name)
    load_script(path)  # a broken script fails here, before any run is recorded
    return ModelTarget("scripted", name, None, "", script=path)


def api_key_for(target: ModelTarget) -> str:
    if target.provider == "scripted":
        return NO_KEY
    key = os.environ.get(target.api_key_env)
    if key:
        return key
    if target.base_url is not None:
        return NO_KEY
    raise ModelConfigError(
        f"{target.api_key_env} is not set; the {target.provider} provider needs an API key",
        hint=f"export {target.api_key_env}=... or point base_url at a server that needs none",
    )


@dataclass(frozen=True)
class ModelClient:
    """A pydantic-ai model and the SDK client under it, which its owner must close."""

    model: Model
    sdk_client: Any

    async def aclose(self) -> None:
        await self.sdk_client.close()


def build_model(target: ModelTarget, api_key: str, *, timeout_s: float = 600.0) -> ModelClient:
    """A pydantic-ai model for ``target`` whose SDK client never retries on its own.

    A scripted target is served on 127.0.0.1 by this process (started now unless it already is) and
    reached over real HTTP with the OpenAI Chat Completions model, like any OpenAI-compatible server.
    """
    if target.provider == "scripted":
        from openai import AsyncOpenAI
        from pydantic_ai.models.openai import OpenAIChatModel
        from pydantic_ai.providers.openai import OpenAIProvider

        from corral.models.scripted import PROCESS_MODELS

        if target.script is None:
            raise ModelConfigError(f"model {target.ref!r} names no script (resolve it with resolve_target)")
        server = PROCESS_MODELS.server_for(target.script)
        assert server.script is not None
        client = AsyncOpenAI(api_key=api_key, base_url=server.openai_base_url, max_retries=0, timeout=timeout_s)
        model = OpenAIChatModel(server.script.model, provider=OpenAIProvider(openai_client=client))
        return ModelClient(model, client)
    if target.provider in ("openai", "openai-chat"):
        from openai import AsyncOpenAI
        from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
        from pydantic_ai.providers.openai import OpenAIProvider

        client = AsyncOpenAI(api_key=api_key, base_url=target.base_url, max_retries=0, timeout=timeout_s)
        provider = OpenAIProvider(openai_client=client)
        if target.provider == "openai":
            return ModelClient(OpenAIResponsesModel(target.name, provider=provider), client)
        return ModelClient(OpenAIChatModel(target.name, provider=provider), client)
    if target.provider == "anthropic":
        from anthropic import AsyncAnthropic
        from pydantic_ai.models.anthropic import AnthropicModel
        from pydantic_ai.providers.anthropic import AnthropicProvider

        aclient = AsyncAnthropic(api_key=api_key, base_url=target.base_url, max_retries=0, timeout=timeout_s)
        return ModelClient(AnthropicModel(target.name, provider=AnthropicProvider(anthropic_client=aclient)), aclient)
    raise ModelConfigError(f"unknown model provider {target.provider!r}")  # resolve_target checked already


def context_window(target: ModelTarget) -> int | None:
    """The model's context window in tokens, when pydantic-ai's tables know it."""
    if target.provider == "scripted":
        return None
    try:
        from pydantic_ai.models import infer_model_profile

        profile = infer_model_profile(target.ref if target.provider != "openai-chat" else f"openai:{target.name}")
    except Exception:
        return None
    value = profile.get("context_window") if isinstance(profile, dict) else getattr(profile, "context_window", None)
    return int(value) if isinstance(value, int) else None


def close_served_models() -> None:
    """Stop the model servers this process started for its runs (``scripted:`` models).

    The runtime calls this at shutdown; it also happens at interpreter exit. A later run starts them again.
    """
    served = sys.modules.get("corral.models.scripted.served")
    if served is not None:  # never imported: nothing was served
        served.PROCESS_MODELS.close()


ANTHROPIC_API = "https://api.anthropic.com"
OPENAI_API = "https://api.openai.com/v1"


def gateway_upstreams(target: ModelTarget, api_key: str) -> dict[Any, Any]:
    """Where the model gateway sends an external engine's calls for ``target``, by wire.

    A provider's own wire goes to the provider (its ``base_url`` if the spec set one); a scripted
    target serves both wires from this process's scripted model server, whatever model the engine asks.
    """
    from corral.models.gateway import Upstream

    if target.provider == "scripted":
        from corral.models.scripted import PROCESS_MODELS

        if target.script is None:
            raise ModelConfigError(f"model {target.ref!r} names no script (resolve it with resolve_target)")
        server = PROCESS_MODELS.server_for(target.script)
        return {
            "anthropic": Upstream(server.anthropic_base_url, api_key),
            "openai": Upstream(server.openai_base_url, api_key),
        }
    if target.provider == "anthropic":
        return {"anthropic": Upstream(target.base_url or ANTHROPIC_API, api_key)}
    return {"openai": Upstream(target.base_url or OPENAI_API, api_key)}
