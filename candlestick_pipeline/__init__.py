"""MOEX ISS candles pipeline."""
