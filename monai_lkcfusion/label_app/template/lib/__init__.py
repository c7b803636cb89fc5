"""Tasks of the LKC-FUNet fusion MONAI Label app."""
