"""cxr-triage core: decoding, preprocessing, labels, specs and triage logic.

Imported by training and by the Triton python models; depends on numpy, Pillow, OpenCV, SciPy and
pydicom only (no torch), so it runs inside Triton's python-backend environment.
"""
__version__ = "0.1.0"
