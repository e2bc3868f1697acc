"""testing: support for the tests, the demo and the benchmarks; never imported by the engine itself.

Owns: `tiny` (tiny random checkpoints written in every real layout under the public file names) and
`measure` (peak-RSS measurement). May import any other subpackage.
"""
