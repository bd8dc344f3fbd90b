"""Hooks for tests that run inside the package (floor 0): fault injection, planned through the environment
so that a launched job's ranks can be made to fail, stall or produce NaN at a chosen place.
May import: nothing of distbp.
"""
