"""The `imagecorruptions` package's own corruptions (1.1.2, the any-size ImageNet-C of Michaelis et al.), run in the
mmsegmentation side environment (tests/reference/mmseg_env.py) for test_corruptions_reference.py; never imports
seglab.

    python imagecorruptions_runner.py IN.npz OUT.npz

IN holds `image` (uint8 H x W x 3), `names` and `severities`; for every (name, severity) the global NumPy stream is
seeded with the severity and `imagecorruptions.corrupt` runs, the result stored as OUT[f"{name}/{severity}"];
OUT["frost_dir"] names the package's frost textures.

The package calls scikit-image's `gaussian(..., multichannel=True)` (removed in scikit-image 0.19) and NumPy's
`np.float_` (removed in NumPy 2.0): the two patches below restore exactly those names, nothing else.
"""

import sys
from pathlib import Path

import numpy as np
import skimage.filters

_gaussian = skimage.filters.gaussian


def gaussian(image, sigma=1, multichannel=None, **kwargs):
    if multichannel:
        kwargs["channel_axis"] = -1
    return _gaussian(image, sigma=sigma, **kwargs)


np.float_ = np.float64
import imagecorruptions  # noqa: E402
import imagecorruptions.corruptions  # noqa: E402

imagecorruptions.corruptions.gaussian = gaussian

data = np.load(sys.argv[1])
image = data["image"]
out = {"frost_dir": np.array(str(Path(imagecorruptions.__file__).parent / "frost"))}
for name in data["names"]:
    for severity in data["severities"]:
        np.random.seed(int(severity))
        out[f"{name}/{severity}"] = imagecorruptions.corrupt(image, corruption_name=str(name),
                                                             severity=int(severity))
np.savez(sys.argv[2], **out)
