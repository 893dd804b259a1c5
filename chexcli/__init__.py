"""chexcli: the ChEX chest X-ray explainer as a toolkit and a Python package."""

__version__ = "0.1.0"
