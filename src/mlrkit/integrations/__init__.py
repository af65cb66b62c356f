"""Bridges to other libraries, each imported only when used (its package is an extra):

* :mod:`mlrkit.integrations.torchmetrics`: ``MultiLabelMetrics``, a ``torchmetrics.Metric``
  equal to :func:`mlrkit.evaluate`, synchronised across DDP processes (Lightning and others).
"""
