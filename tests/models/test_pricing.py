"""Prices: a spec's ``[prices]`` override is the type ``price_call`` takes, passed as it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.events import Usage
from corral.models.pricing import price_call
from corral.spec import load_config


def test_a_specs_prices_are_passed_to_price_call_as_they_are(tmp_path: Path) -> None:
    path = tmp_path / "corral.toml"
    path.write_text(
        '[agents.a]\nmodel = "openai-chat:local"\n'
        '[prices."openai-chat:local"]\ninput_mtok = 2.0\noutput_mtok = 10.0\ncache_read_mtok = 0.5\n'
    )
    spec = load_config(path).agent("a")
    usage = Usage(input_tokens=1_000_000, output_tokens=100_000, cache_read_tokens=400_000)
    cost, source = price_call(usage, model="local", provider="openai", overrides=spec.prices, ref=spec.model)
    assert source == "override"
    # 600k uncached input at 2.0, 400k cached at 0.5, 100k output at 10.0 (USD per million tokens).
    assert cost == pytest.approx(1.2 + 0.2 + 1.0)


def test_an_unknown_model_without_an_override_costs_nothing_and_says_so() -> None:
    cost, source = price_call(Usage(input_tokens=10), model="no-such-model-anywhere", provider="nobody")
    assert (cost, source) == (0.0, "unknown")
