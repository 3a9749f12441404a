"""Logic classes working on MRML nodes (no Qt). The scene is passed in; inside Slicer
it defaults to ``slicer.mrmlScene``."""
