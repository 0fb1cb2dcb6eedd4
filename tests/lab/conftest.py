"""Lab fixtures (``lab_factory``, ``shared_lab``) for the tests in this directory."""

from bridger.lab.fixtures import lab_factory, shared_lab

__all__ = ["lab_factory", "shared_lab"]
