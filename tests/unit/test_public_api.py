"""The skills and gateway packages re-export a sorted public surface."""

from __future__ import annotations

import pytest

from orchestrator import gateway, skills


@pytest.mark.parametrize("package", [gateway, skills])
def test_public_names_are_sorted_and_importable(package):
    """`__all__` is sorted and every name in it exists on the package."""
    assert list(package.__all__) == sorted(package.__all__)
    assert all(hasattr(package, name) for name in package.__all__)
