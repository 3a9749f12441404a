"""Training and synthetic-data generation for the shipped models and the test fixtures.

Not part of the product: this folder is neither installed into Slicer (CMakeLists.txt) nor
packaged in the wheel (setup.py). Run its scripts from the repository root, for example
``python -m Training.train --help``.
"""
