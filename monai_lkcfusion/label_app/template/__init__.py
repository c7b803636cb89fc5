"""Files of the MONAI Label app written by :func:`monai_lkcfusion.label_app.write_label_app` (not imported here)."""
