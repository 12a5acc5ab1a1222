"""Tools beside the product, not part of it: the `supportbot bench` benchmark and its baseline.

`benchmarks.bench` times the product's fast paths against the original tutorial's loops
(`benchmarks.tutorial_baseline`). The runtime (`bot`, `knowledge`) never imports this
package; only the `bench` command loads it, inside the command (tests/test_bench.py checks).
"""
