import unittest
from decimal import Decimal

from inventory import Inventory


class InventoryTest(unittest.TestCase):
    def setUp(self):
        self.inv = Inventory()
        self.inv.add("apple", 3, unit_price="0.40")

    def test_add_accumulates(self):
        self.inv.add("apple", 2, unit_price="0.40")
        self.assertEqual(self.inv.quantity("apple"), 5)

    def test_add_rejects_non_positive_quantities(self):
        with self.assertRaises(ValueError):
            self.inv.add("apple", 0)

    def test_remove_ships_units(self):
        self.inv.remove("apple", 1)
        self.assertEqual(self.inv.quantity("apple"), 2)

    def test_unknown_sku_has_no_stock(self):
        self.assertEqual(self.inv.quantity("pear"), 0)

    def test_total_value(self):
        self.inv.add("pear", 2, unit_price="1.25")
        self.assertEqual(self.inv.total_value(), Decimal("3.70"))


if __name__ == "__main__":
    unittest.main()
