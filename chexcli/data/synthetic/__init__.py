"""The synthetic data source: random chest scenes, their images, report text and tables.

:mod:`chexcli.data.prepare.synthetic` writes a folder from them (docs/data.md#synthetic-data).
"""
