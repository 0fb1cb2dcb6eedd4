"""bridger: a Layer-2 site-to-site bridge over an authenticated, encrypted UDP link."""

__version__ = "0.1.0"
