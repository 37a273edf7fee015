"""The inventory: how many of each SKU are in stock, and at what unit price."""

from decimal import Decimal


class Inventory:
    """Stock levels and unit prices, keyed by SKU."""

    def __init__(self):
        self._stock = {}
        self._prices = {}

    def add(self, sku, qty, unit_price="0"):
        """Receives `qty` units of `sku`; the unit price is remembered for valuation."""
        if qty <= 0:
            raise ValueError("quantity must be positive")
        self._stock[sku] = self._stock.get(sku, 0) + qty
        self._prices[sku] = Decimal(str(unit_price))

    def remove(self, sku, qty):
        """Ships `qty` units of `sku`."""
        self._stock[sku] = self._stock.get(sku, 0) - qty

    def quantity(self, sku):
        """Units of `sku` in stock (0 for an unknown SKU)."""
        return self._stock.get(sku, 0)

    def total_value(self):
        """The value of everything in stock, in the prices' currency."""
        return sum(
            (self._prices[sku] * qty for sku, qty in self._stock.items()),
            Decimal("0"),
        )
