"""`chex data prepare`: raw downloads -> processed folders, one module per source.

:func:`chexcli.data.prepare.dispatch.prepare` looks the source up in its table of preparers.
"""
