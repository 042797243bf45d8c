"""Benchmarks: `python -m bench NAME|all`, one JSON object per line (see DESIGN.md, Measuring)."""
