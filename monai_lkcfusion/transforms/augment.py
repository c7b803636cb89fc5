"""Training augmentation for fusion pairs: random monotone intensity remaps that keep background at zero.

A fusion network meets other scanners, tracers and colour maps than the ones it trained on. The luma of a
pseudo-colour PET/SPECT is a monotone-ish function of the tracer uptake whose shape depends on the colour map and
the display window, and an MRI's contrast depends on the sequence. :class:`RandIntensityRemap` draws a random
monotone curve through ``(0, 0)`` and ``(1, 1)`` (a gamma or a piecewise-linear curve) and applies it, so that a
model does not learn one colour map's luma profile, and zero (background) stays exactly zero.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends

__all__ = ["RandIntensityRemap", "RandIntensityRemapd", "RandIntensityRemapD", "RandIntensityRemapDict"]


class RandIntensityRemap(RandomizableTransform):
    """Apply a random monotone curve ``[0, 1] -> [0, 1]`` with ``0 -> 0`` and ``1 -> 1`` to an image in [0, 1].

    With probability ``gamma_prob`` the curve is ``x ** g`` with ``log g`` uniform in ``log(gamma_range)``;
    otherwise it is piecewise linear through ``num_knots`` interior knots whose outputs are sorted uniform draws
    jittered from the identity by at most ``knot_jitter``.

    Args:
        prob: probability of remapping an image.
        gamma_range: ``(low, high)`` range of the gamma exponent.
        gamma_prob: share of gamma curves among the remaps (the rest are piecewise linear).
        num_knots: interior knots of the piecewise-linear curves.
        knot_jitter: largest move of a knot's output away from the identity.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        prob: float = 0.5,
        gamma_range: Sequence[float] = (0.5, 2.0),
        gamma_prob: float = 0.5,
        num_knots: int = 3,
        knot_jitter: float = 0.15,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        if not 0 < gamma_range[0] <= gamma_range[1]:
            raise ValueError(f"gamma_range must be positive and ordered, got {tuple(gamma_range)}")
        self.gamma_range = (float(gamma_range[0]), float(gamma_range[1]))
        self.gamma_prob = float(gamma_prob)
        self.num_knots = int(num_knots)
        self.knot_jitter = float(knot_jitter)
        self._gamma: float | None = None
        self._knots: tuple[np.ndarray, np.ndarray] | None = None

    def randomize(self, data: object = None) -> None:
        """Draw whether to remap and which curve.

        Args:
            data: ignored (MONAI's ``randomize`` signature).
        """
        super().randomize(None)
        if not self._do_transform:
            return
        self._gamma, self._knots = None, None
        if self.R.rand() < self.gamma_prob:
            self._gamma = float(np.exp(self.R.uniform(*np.log(self.gamma_range))))
            return
        x = np.linspace(0.0, 1.0, self.num_knots + 2)
        y = np.clip(x[1:-1] + self.R.uniform(-self.knot_jitter, self.knot_jitter, self.num_knots), 0.0, 1.0)
        self._knots = (x, np.concatenate([[0.0], np.sort(y), [1.0]]))

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        """Remap ``img`` (any shape, values in [0, 1]); returns a tensor of the same shape and type."""
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        if self._gamma is not None:
            return img.clamp(0.0, 1.0) ** self._gamma
        x, y = (torch.as_tensor(v, dtype=img.dtype, device=img.device) for v in self._knots)
        clamped = img.clamp(0.0, 1.0)
        segment = torch.bucketize(clamped, x[1:-1])  # which linear piece each voxel is on
        slope = (y[1:] - y[:-1]) / (x[1:] - x[:-1])
        return y[segment] + slope[segment] * (clamped - x[segment])


class RandIntensityRemapd(RandomizableTransform, MapTransform):
    """Dictionary wrapper of :class:`RandIntensityRemap`; every key gets its own curve.

    Args:
        keys: keys of the images to remap (e.g. ``"other"`` for the functional image).
        allow_missing_keys: don't raise when a key is absent.
        kwargs: :class:`RandIntensityRemap` arguments (``prob``, ``gamma_range``, ...).
    """

    backend = RandIntensityRemap.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs: object) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, 1.0)
        self.remap = RandIntensityRemap(**kwargs)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandIntensityRemapd:
        """Seed this wrapper and its :class:`RandIntensityRemap` alike.

        Args:
            seed: a seed for both random states.
            state: a ``RandomState`` to use instead of ``seed``.

        Returns:
            this transform.
        """
        super().set_random_state(seed, state)
        self.remap.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.remap(d[key], randomize=True)
        return d


RandIntensityRemapD = RandIntensityRemapDict = RandIntensityRemapd
