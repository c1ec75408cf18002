"""The warehouse resource (``WarehouseResource``) that assets use to store candles and securities."""

from candlestick_pipeline.defs.warehouse.resource import WarehouseResource

__all__ = ["WarehouseResource"]
