"""Pure algorithms on SimpleITK images, numpy arrays and torch tensors.

Nothing in this package imports slicer, vtk or qt, so it is testable anywhere.
"""
