"""A plain-text stock report."""

from __future__ import annotations

from .stock import Inventory


def stock_report(inventory: Inventory) -> str:
    lines = [f"{'SKU':<8} {'item':<16} {'qty':>4}"]
    for item in sorted(inventory.items.values(), key=lambda item: item.sku):
        lines.append(f"{item.sku:<8} {item.name:<16} {item.quantity:>4}")
    reorder = ", ".join(item.sku for item in inventory.needs_reorder()) or "nothing"
    lines.append(f"reorder: {reorder}")
    lines.append(f"stock value: {inventory.total_value():.2f}")
    return "\n".join(lines)
