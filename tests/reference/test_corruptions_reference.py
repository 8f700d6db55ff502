"""seglab's corruptions against the `imagecorruptions` package's own code (run in the mmseg side environment):
both draw from the same legacy NumPy stream (a shim hands our `numpy.random.Generator` calls to `np.random` in the
package's call forms), so every corruption must give the same picture up to one grey level of rounding.

Left out: impulse noise (scikit-image draws its salt and pepper from a Generator of its own, so the streams cannot
be shared). Frost resizes its texture with Pillow's bicubic where the package uses OpenCV's, so it is held to the
mean difference only (the texture's pixels differ by a few grey levels)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from mmseg_env import mmseg_python

from seglab.analyze.corruptions import CORRUPTIONS, corrupt

pytestmark = [pytest.mark.mmseg, pytest.mark.reference]
RUNNER = Path(__file__).with_name("imagecorruptions_runner.py")
NAMES = [n for n in CORRUPTIONS if n != "impulse_noise"]


class LegacyStream:
    """Our Generator calls, on NumPy's global legacy stream, in the forms the package calls it."""

    def normal(self, loc=0.0, scale=1.0, size=None):
        return np.random.normal(size=size, loc=loc, scale=scale) if loc else np.random.normal(size=size, scale=scale)

    def poisson(self, lam):
        return np.random.poisson(lam)

    def uniform(self, low, high, size=None):
        return np.random.uniform(low, high, size)

    def integers(self, low, high=None, size=None):
        if size is None:
            return np.random.randint(low) if high is None else np.random.randint(low, high)
        return np.array([np.random.randint(low, high, size=(2,)) for _ in range(size[0])])  # glass blur's pairs


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    python, reason = mmseg_python()
    if python is None:
        pytest.skip(reason)
    rs = np.random.RandomState(0)
    yy, xx = np.mgrid[0:96, 0:112]
    image = np.stack([(xx * 2) % 256, (yy * 3) % 256, ((xx + yy) * 5) % 256], -1).astype(np.uint8)
    image[20:60, 30:80] = (200, 40, 90)
    image = np.clip(image.astype(int) + rs.randint(-20, 20, image.shape), 0, 255).astype(np.uint8)
    folder = tmp_path_factory.mktemp("imagecorruptions")
    np.savez(folder / "in.npz", image=image, names=np.array(NAMES), severities=np.arange(1, 6))
    proc = subprocess.run([str(python), str(RUNNER), str(folder / "in.npz"), str(folder / "out.npz")],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return image, dict(np.load(folder / "out.npz"))


@pytest.mark.parametrize("name", NAMES)
def test_corruption_equals_imagecorruptions(reference, name):
    image, theirs = reference
    frost_dir = str(theirs["frost_dir"]) if name == "frost" else None
    for severity in range(1, 6):
        np.random.seed(severity)
        ours = corrupt(image, name, severity, LegacyStream(), frost_dir=frost_dir).astype(int)
        difference = np.abs(ours - theirs[f"{name}/{severity}"].astype(int))
        if name == "frost":
            assert difference.mean() < 1.0, (severity, difference.mean())
        else:
            assert difference.max() <= 1, (severity, difference.max(), (difference > 1).mean())
