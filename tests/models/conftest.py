"""Fixtures for the model tests: SDK clients pointed at a scripted model server, closed after the test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import anthropic
import openai
import pytest

from corral.models.scripted import ScriptedServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def openai_for() -> Iterator[Callable[..., openai.OpenAI]]:
    """``openai_for(server, max_retries=0)``: a real OpenAI client talking to the server."""
    clients: list[openai.OpenAI] = []

    def make(server: ScriptedServer, max_retries: int = 0) -> openai.OpenAI:
        clients.append(openai.OpenAI(base_url=server.openai_base_url, api_key="sk-test", max_retries=max_retries))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def anthropic_for() -> Iterator[Callable[..., anthropic.Anthropic]]:
    """``anthropic_for(server, max_retries=0)``: a real Anthropic client talking to the server."""
    clients: list[anthropic.Anthropic] = []

    def make(server: ScriptedServer, max_retries: int = 0) -> anthropic.Anthropic:
        url = server.anthropic_base_url
        clients.append(anthropic.Anthropic(base_url=url, api_key="sk-ant-test", max_retries=max_retries))
        return clients[-1]

    yield make
    for client in clients:
        client.close()
