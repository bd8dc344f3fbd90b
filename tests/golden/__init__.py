"""Golden values recorded from distbp (record.py, values.json) and the cases that compute them (cases.py)."""
