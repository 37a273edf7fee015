"""A tiny stock-keeping package: quantities and prices per SKU."""

from inventory.core import Inventory

__all__ = ["Inventory"]
