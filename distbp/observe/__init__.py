"""What a person sees of a run (floor 2): the trace timeline, its plot, the metric curves, the progress bar.
May import: distbp.errors, distbp.units, distbp.comm and its own modules (matplotlib only inside the plots).
"""
