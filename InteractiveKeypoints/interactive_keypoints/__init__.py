"""InteractiveKeypoints engine: interactive anatomical keypoint estimation on radiographs.

Importable without Slicer or Qt. Start with ``session.KeypointSession`` and
``model_io.load_model``; ``cli`` has the command line.
"""

__version__ = "0.1.0"
