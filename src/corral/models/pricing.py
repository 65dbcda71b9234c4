"""The cost of a model call: genai-prices' maintained table, unless the spec overrides the price."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from corral.events import Usage
from corral.spec import ModelPrice

log = logging.getLogger("corral.pricing")


Price = ModelPrice
"""The name engines/native.py imports; the same class as ``corral.spec.ModelPrice``, so a spec's
``prices`` can be passed as ``overrides`` as they are."""


@dataclass(frozen=True)
class _GenaiUsage:
    # genai-prices' AbstractUsage protocol. Its input_tokens include the cached ones.
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int


def price_call(
    usage: Usage, *, model: str, provider: str, overrides: Mapping[str, ModelPrice] | None = None, ref: str = ""
) -> tuple[float, str]:
    """(cost in USD, where the price came from: "override", "genai-prices" or "unknown")."""
    override = (overrides or {}).get(ref) or (overrides or {}).get(model)
    if override is not None:
        uncached = max(usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens, 0)
        cost = (
            uncached * override.input_mtok
            + usage.output_tokens * override.output_mtok
            + usage.cache_read_tokens
            * (override.cache_read_mtok if override.cache_read_mtok is not None else override.input_mtok)
            + usage.cache_write_tokens
            * (override.cache_write_mtok if override.cache_write_mtok is not None else override.input_mtok)
        ) / 1_000_000
        return cost, "override"
    try:
        from genai_prices import calc_price

        calc = calc_price(
            _GenaiUsage(usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens),
            model,
            provider_id=provider,
        )
    except LookupError:
        log.debug("no price for %s/%s", provider, model)
        return 0.0, "unknown"
    return float(calc.total_price), "genai-prices"
