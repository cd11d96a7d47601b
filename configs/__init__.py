"""The shipped scenarios and matrices, as package data (the harness's resources.py says why this file is here)."""
