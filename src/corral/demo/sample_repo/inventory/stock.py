"""What is on the shelf, and what needs to be reordered."""

from __future__ import annotations

from dataclasses import dataclass, field


class OutOfStockError(ValueError):
    """More units were requested than are on the shelf."""


@dataclass
class Item:
    sku: str
    name: str
    quantity: int
    reorder_level: int
    unit_price: float = 0.0

    @property
    def value(self) -> float:
        return self.quantity * self.unit_price


@dataclass
class Inventory:
    items: dict[str, Item] = field(default_factory=dict)

    def add(self, item: Item) -> None:
        if item.sku in self.items:
            raise ValueError(f"duplicate SKU {item.sku!r}")
        self.items[item.sku] = item

    def restock(self, sku: str, quantity: int) -> None:
        if quantity <= 0:
            raise ValueError("restock quantity must be positive")
        self.items[sku].quantity += quantity

    def sell(self, sku: str, quantity: int) -> None:
        item = self.items[sku]
        if quantity > item.quantity:
            raise OutOfStockError(f"only {item.quantity} of {sku!r} left, cannot sell {quantity}")
        item.quantity -= quantity

    def needs_reorder(self) -> list[Item]:
        """Items at or below their reorder level, lowest stock first."""
        low = [item for item in self.items.values() if item.quantity < item.reorder_level]
        return sorted(low, key=lambda item: (item.quantity, item.sku))

    def total_value(self) -> float:
        return round(sum(item.value for item in self.items.values()), 2)
