"""Communication between ranks (floor 1, above errors, units and host).

`base` is the `Comm` interface, `mpi` its MPI implementation (the only module that calls MPI) with `world()`,
`serial` the one-process one; `ring`, `bruck` (on `queued`, what they share) and `hier` are distbp's own allreduce
transports built on that interface, `codecs` their 16-bit words; `checks` the agreement checks every Comm shares.
May import: distbp.errors, distbp.units, distbp.host and its own modules.
"""
