"""ctest with Slicer's Python: the background worker reproduces ``python -m monai_lkcfusion fuse``; the install plan
keeps Slicer's packages. (The GUI-level tests are ``LKCFusionTest`` in LKCFusion.py.)"""

import os
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from LKCFusionLib.dependencies import install_plan, installed_versions
from LKCFusionLib.process import FusionProcess


class LKCFusionModuleTest(unittest.TestCase):
    def test_worker_matches_command_line_on_demo_volumes(self):
        import numpy as np
        import SimpleITK as sitk

        from monai_lkcfusion.data import demo_files

        files = demo_files()
        with tempfile.TemporaryDirectory() as tmp:
            process = FusionProcess(sys.executable)
            try:
                process.submit({"mri": str(files["mri_3d"]), "other": str(files["pet_3d"]),
                                "output": os.path.join(tmp, "worker.nrrd"), "device": "cpu", "method": "max"})
                events, deadline = [], time.time() + 600
                while not any(e["event"] in ("done", "error", "exit") for e in events) and time.time() < deadline:
                    events += process.poll()
                    time.sleep(0.1)
            finally:
                process.close()
            self.assertEqual(events[-1]["event"], "done", events[-1])
            subprocess.check_call([sys.executable, "-m", "monai_lkcfusion", "fuse", str(files["mri_3d"]),
                                   str(files["pet_3d"]), "-o", os.path.join(tmp, "cli.nrrd"), "--method", "max",
                                   "--device", "cpu"])
            worker, cli = (sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(tmp, f))) for f in
                           ("worker.nrrd", "cli.nrrd"))
            np.testing.assert_array_equal(worker, cli)

    def test_install_plan_keeps_slicer_packages(self):
        from monai_lkcfusion import __file__ as package_file

        checkout = os.path.dirname(os.path.dirname(package_file))
        if not os.path.isfile(os.path.join(checkout, "pyproject.toml")):
            self.skipTest("monai-lkcfusion is not installed from a source checkout")
        plan = install_plan(checkout, "constraints.txt", installed_versions())
        self.assertFalse([a for a in plan.dependencies if a.startswith(("torch", "monai=="))])
        self.assertIn("--no-deps", plan.package)


if __name__ == "__main__":
    unittest.main()
