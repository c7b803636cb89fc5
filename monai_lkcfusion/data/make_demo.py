"""Demo data derived from the MNI ICBM152 2009 template that the nilearn package carries (no download).

Run ``python -m monai_lkcfusion.data.make_demo`` to (re)write ``monai_lkcfusion/data/demo/``:

- ``mri_t1.nii.gz``: the skull-stripped T1 template at its native 1 mm, cropped to the brain (axial slab);
- ``pet_sim.nii.gz``: a simulated FDG-like PET: gray matter 1.0, white matter 0.25, smoothed to 6 mm FWHM,
  sampled on a coarser 2 mm grid whose origin is shifted by a non-integer offset from the MRI's, so the demo
  exercises affine-aware resampling;
- ``mri_slice.png`` / ``pet_slice.png``: one axial slice of each on the MRI grid, the PET in pseudo-colour (RGB);
- ``NOTICE``: the template's copyright notice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .samples import DEMO_DIR, DEMO_FILES

__all__ = ["make_demo"]

_PET_SPACING = 2.0
_PET_SHIFT = (3.3, -4.7, 2.9)  # mm, world offset of the PET grid's origin
_FWHM_MM = 6.0

NOTICE = """\
Demo images in this folder are derived from the MNI ICBM152 non-linear symmetric 2009a T1-weighted template and
its gray/white matter probability maps, as distributed with the nilearn package
(mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz). mri_t1.nii.gz is a crop of the T1 template;
pet_sim.nii.gz is a simulated PET computed from the tissue maps (not a real PET); the PNG files are slices of
both. They were produced by monai_lkcfusion/data/make_demo.py.

Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute,
McGill University. Permission to use, copy, modify, and distribute this software and its documentation for
any purpose and without fee is hereby granted, provided that the above copyright notice appear in all copies.
The authors and McGill University make no representations about the suitability of this software for any
purpose. It is provided "as is" without express or implied warranty. The authors are not responsible for any
data loss, equipment damage, property loss, or injury to subjects or patients resulting from the use or misuse
of this software package.

References: Fonov V, Evans AC, Botteron K, Almli CR, McKinstry RC, Collins DL. Unbiased average
age-appropriate atlases for pediatric studies. NeuroImage 54(1), 2011. Fonov VS, Evans AC, McKinstry RC,
Almli CR, Collins DL. Unbiased nonlinear average age-appropriate brain templates from birth to adulthood.
NeuroImage 47, Supplement 1, 2009. Collins DL, Zijdenbos AP, Baare WFC, Evans AC. ANIMAL+INSECT: Improved
Cortical Structure Segmentation. IPMI 1999.
"""


def _template(kind: str):
    """One of nilearn's packaged ICBM152 2009a images (``t1``, ``gm``, ``wm``) as a nibabel image."""
    import nibabel as nib
    import nilearn.datasets

    path = Path(nilearn.datasets.__file__).parent / "data" / f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"
    return nib.load(str(path))


def _display(plane: np.ndarray) -> np.ndarray:
    """An axial RAS slice ``(X, Y)`` as a picture: anterior up, patient's right on the left (radiological)."""
    return plane[:, ::-1].T


def make_demo(out_dir: str | Path = DEMO_DIR, slab: int = 72) -> dict[str, Path]:
    """Write the demo images (see the module docstring) into ``out_dir``.

    Args:
        out_dir: destination folder.
        slab: number of axial 1 mm slices kept around the brain's centre.

    Returns:
        The written paths by key, as :func:`~monai_lkcfusion.data.samples.demo_files`.
    """
    import nibabel as nib
    from matplotlib import colormaps
    from PIL import Image
    from scipy import ndimage

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t1 = _template("t1")
    data = np.asarray(t1.dataobj, dtype=np.float32)  # (X, Y, Z), 0..255
    inside = np.argwhere(data > 0.05 * data.max())
    low, high = inside.min(0), inside.max(0) + 1
    centre = (low[2] + high[2]) // 2 + 10
    low[2], high[2] = centre - slab // 2, centre + slab // 2
    crop = tuple(slice(a, b) for a, b in zip(low, high))
    mri_affine = t1.affine.copy()
    mri_affine[:3, 3] = t1.affine[:3, :3] @ low + t1.affine[:3, 3]
    mri = nib.Nifti1Image(np.round(data[crop]).astype(np.uint8), mri_affine)
    mri.header.set_xyzt_units("mm")

    tissue = np.asarray(_template("gm").dataobj, np.float32) + 0.25 * np.asarray(_template("wm").dataobj, np.float32)
    activity = ndimage.gaussian_filter(tissue / tissue.max(), _FWHM_MM / 2.3548)  # on the template's 1 mm grid
    pet_affine = np.diag([_PET_SPACING] * 3 + [1.0])
    pet_affine[:3, 3] = mri_affine[:3, 3] + np.asarray(_PET_SHIFT)
    pet_shape = tuple(int(np.ceil(s / _PET_SPACING)) + 2 for s in mri.shape)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in pet_shape], indexing="ij"), 0).reshape(3, -1)
    world = pet_affine[:3, :3] @ grid + pet_affine[:3, 3:]
    index = np.linalg.inv(t1.affine)[:3, :3] @ world + np.linalg.inv(t1.affine)[:3, 3:]
    pet_data = ndimage.map_coordinates(activity, index, order=1, cval=0.0).reshape(pet_shape)
    noise = np.random.default_rng(0).normal(0.0, 0.01, pet_shape)
    pet = nib.Nifti1Image(np.clip(pet_data + noise * (pet_data > 0.02), 0, None).astype(np.float32), pet_affine)
    pet.header.set_xyzt_units("mm")

    paths = {key: out_dir / name for key, name in DEMO_FILES.items()}
    nib.save(mri, str(paths["mri_3d"]))
    nib.save(pet, str(paths["pet_3d"]))

    # 2D slices: the PET resampled onto the MRI's middle axial slice
    z = mri.shape[2] // 2
    plane = np.stack(np.meshgrid(np.arange(mri.shape[0]), np.arange(mri.shape[1]), [z], indexing="ij"), 0)
    world = mri_affine[:3, :3] @ plane.reshape(3, -1) + mri_affine[:3, 3:]
    pet_index = np.linalg.inv(pet_affine)[:3, :3] @ world + np.linalg.inv(pet_affine)[:3, 3:]
    pet_plane = ndimage.map_coordinates(pet.get_fdata(), pet_index, order=1).reshape(mri.shape[:2])
    colour = colormaps["hot"](_display(pet_plane / (1.4 * pet_plane.max())))[..., :3]  # peak orange, not white
    Image.fromarray(_display(np.asarray(mri.dataobj)[:, :, z])).save(paths["mri_2d"])
    Image.fromarray(np.round(colour * 255).astype(np.uint8)).save(paths["pet_2d"])
    (out_dir / "NOTICE").write_text(NOTICE)
    return paths


def main(argv: list[str] | None = None) -> int:
    """``python -m monai_lkcfusion.data.make_demo [OUT_DIR]``: write the demo images (default: the package's own).

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
        0.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m monai_lkcfusion.data.make_demo",
                                     description="Make the demo images from the MNI template files nilearn ships.")
    parser.add_argument("out_dir", nargs="?", default=str(DEMO_DIR),
                        help="destination folder (default: the package's demo folder, which is replaced)")
    args = parser.parse_args(argv)
    for key, path in make_demo(args.out_dir).items():
        print(f"{key}: {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
