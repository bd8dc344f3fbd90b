"""The rows (floor 3): datasets and their file formats, the data cache, which rows each rank computes
(`shard`), each rank's own files (`localdata`) and the gather buffers a step fills (`batch`).
May import: distbp.errors, distbp.units, distbp.comm and its own modules.
"""
