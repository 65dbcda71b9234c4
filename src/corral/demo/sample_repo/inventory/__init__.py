"""Stock tracking for a small shop."""

from .report import stock_report
from .stock import Inventory, Item, OutOfStockError

__all__ = ["Inventory", "Item", "OutOfStockError", "stock_report"]
