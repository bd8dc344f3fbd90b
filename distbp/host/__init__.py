"""This process on its machine (floor 0): thread pools and their pinning (`threads`), what the launcher says
about the job (`launcher`), how ctrl-c reaches a rank (`interrupts`), whether a process is alive (`procs`),
folders other users cannot plant files in (`files`), the Numba cache checked before Numba reads it
(`numbacache`), the memory still available (`meminfo`).
Standard library only at import, so that the command line can pin thread counts before numpy, SciPy or Numba
start their pools. May import: nothing of distbp but its own modules.
"""
