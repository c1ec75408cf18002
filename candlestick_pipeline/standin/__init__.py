"""A local stand-in for MOEX ISS (synthetic market + HTTP server) for offline tests, demo and benchmarks."""
