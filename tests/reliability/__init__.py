"""Reliability suite: bad inputs, faults and attacks reproduced on real files (issue 9)."""
