"""The cost of a model call: genai-prices' maintained table, unless the spec overrides the price."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from corral.events import Usage
from corral.spec import ModelPrice

log = logging.getLogger("corral.pricing")

#: Models of this provider are corral's scripted test doubles: free, whatever model name a script gives.
SCRIPTED_PROVIDER = "scripted"


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
    """(cost in USD, where the price came from: "override", "scripted", "genai-prices" or "unknown")."""
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
    if provider == SCRIPTED_PROVIDER:
        return 0.0, SCRIPTED_PROVIDER
    table = _table_price(model, provider)
    if table is None:
        return 0.0, "unknown"
    calc = table.calc_price(
        _GenaiUsage(usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens)
    )
    return float(calc["total_price"]), "genai-prices"


@functools.lru_cache(maxsize=256)
def _table_price(model: str, provider: str) -> Any:
    """genai-prices' price of a model (None when it has none), looked up once per process: a lookup
    scans its tables, and every model call of a run asks for the same model."""
    from genai_prices import calc_price

    try:
        found = calc_price(_GenaiUsage(0, 0, 0, 0), model, provider_id=provider)
    except LookupError:
        log.debug("no price for %s/%s", provider, model)
        return None
    return found.model_price
