"""A dict-wrapper base for array transforms that read a second image from another key of the same dict."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import InvertibleTransform, MapTransform

__all__ = ["InvertibleReferencedMapTransform", "ReferencedMapTransform"]


class ReferencedMapTransform(MapTransform):
    """Apply ``transform(d[key], d[ref_key])`` to each of ``keys`` (e.g. the other image onto the MRI's grid).

    Args:
        keys: keys of the images to transform.
        transform: the array transform, called as ``transform(img, reference)``.
        ref_key: key of the second image.
        ref_optional: pass ``None`` when ``ref_key`` is absent (else that is a ``KeyError``).
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        transform: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
        ref_key: str,
        ref_optional: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = transform
        self.ref_key = ref_key
        self.ref_optional = ref_optional

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:  # all absent under allow_missing_keys: the reference is not needed (a KeyError before)
            return d
        reference = d.get(self.ref_key) if self.ref_optional else d[self.ref_key]
        for key in keys:
            d[key] = self.transform(d[key], reference)
        return d


class InvertibleReferencedMapTransform(ReferencedMapTransform, InvertibleTransform):
    """A :class:`ReferencedMapTransform` whose array transform is invertible: ``inverse`` undoes it per key."""

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Undo the array transform on every key (the reference is not needed).

        Args:
            data: the transformed dictionary; its images carry the applied operations.

        Returns:
            a shallow copy of ``data`` with each key's image inverted.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform.inverse(d[key])
        return d
