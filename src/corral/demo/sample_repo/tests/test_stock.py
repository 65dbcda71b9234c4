# pyright: reportMissingImports=false
import unittest

from inventory import Inventory, Item, OutOfStockError


def shop() -> Inventory:
    inventory = Inventory()
    inventory.add(Item("TEA-01", "Green tea", quantity=4, reorder_level=5, unit_price=3.5))
    inventory.add(Item("MUG-02", "Enamel mug", quantity=12, reorder_level=3, unit_price=8.0))
    inventory.add(Item("JAR-03", "Honey jar", quantity=2, reorder_level=6, unit_price=6.25))
    return inventory


class InventoryTest(unittest.TestCase):
    def test_sell_reduces_quantity(self) -> None:
        inventory = shop()
        inventory.sell("MUG-02", 5)
        self.assertEqual(inventory.items["MUG-02"].quantity, 7)

    def test_cannot_sell_more_than_is_in_stock(self) -> None:
        with self.assertRaises(OutOfStockError):
            shop().sell("JAR-03", 3)

    def test_duplicate_sku_is_rejected(self) -> None:
        inventory = shop()
        with self.assertRaises(ValueError):
            inventory.add(Item("TEA-01", "Black tea", quantity=1, reorder_level=1))

    def test_items_below_reorder_level_lowest_first(self) -> None:
        self.assertEqual([item.sku for item in shop().needs_reorder()], ["JAR-03", "TEA-01"])

    def test_item_exactly_at_reorder_level_needs_reorder(self) -> None:
        inventory = shop()
        inventory.sell("MUG-02", 9)  # 3 left, and the reorder level is 3
        self.assertIn("MUG-02", [item.sku for item in inventory.needs_reorder()])

    def test_restock_adds_units(self) -> None:
        inventory = shop()
        inventory.restock("JAR-03", 10)
        self.assertEqual(inventory.items["JAR-03"].quantity, 12)
        self.assertEqual([item.sku for item in inventory.needs_reorder()], ["TEA-01"])


if __name__ == "__main__":
    unittest.main()
