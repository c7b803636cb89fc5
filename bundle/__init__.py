"""This MONAI Bundle as package data of monai-lkcfusion (``monai_lkcfusion.bundle``); it holds no code.

See :mod:`monai_lkcfusion.bundle_files`; ``lkcfusion bundle DEST`` writes a standalone copy without this file.
"""
