"""Device telemetry: per-minute model aggregates, resource samples and the durable outbox.

- ``aggregate``: ``MinuteAggregator``, the pure per-model, per-minute counter fed by inference.
- ``resources``: ``sample_resources``, CPU, memory, temperature and disk from /proc and /sys.
- ``outbox``: ``Outbox``, the SQLite spool; batches are written before they are sent and
  deleted only when the control plane acks them.

Only numbers leave the device: raw inputs (text, audio) never enter this package.
"""
