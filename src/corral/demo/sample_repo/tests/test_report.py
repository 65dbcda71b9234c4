# pyright: reportMissingImports=false
import unittest

from inventory import Inventory, Item, stock_report


class StockReportTest(unittest.TestCase):
    def test_report_lists_items_by_sku_and_what_to_reorder(self) -> None:
        inventory = Inventory()
        inventory.add(Item("TEA-01", "Green tea", quantity=4, reorder_level=5, unit_price=3.5))
        inventory.add(Item("MUG-02", "Enamel mug", quantity=12, reorder_level=3, unit_price=8.0))
        report = stock_report(inventory).splitlines()
        self.assertEqual(report[1].split(), ["MUG-02", "Enamel", "mug", "12"])
        self.assertEqual(report[2].split(), ["TEA-01", "Green", "tea", "4"])
        self.assertEqual(report[-2], "reorder: TEA-01")
        self.assertEqual(report[-1], "stock value: 110.00")

    def test_empty_inventory(self) -> None:
        self.assertEqual(
            stock_report(Inventory()).splitlines()[-2:], ["reorder: nothing", "stock value: 0.00"]
        )


if __name__ == "__main__":
    unittest.main()
