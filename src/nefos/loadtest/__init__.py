"""Load tests: the generator (closed and open model, HDR histograms, a per-second
timeline) that runs in a process of its own, and the pure parts the control plane
shares with it (plans, thresholds, the timeline's arithmetic).

Imports nothing of Nefos above it: the generator process loads only this package.
"""
