"""Artifact stores over apache-libcloud, the placement planner and the reconciler.

- :mod:`.stores` one store vocabulary (list, put with read-back, delete, presign) with
  :mod:`.s3`, :mod:`.azure` and :mod:`.local` adapters, opened from inventory targets by
  :mod:`.factory`; :mod:`.errors` turns libcloud's exceptions into ``CloudError`` and
  :mod:`.retry` retries the transient ones.
- :mod:`.planner` the pure planner: policy + inventory + manifest -> plan with reasons and cost.
- :mod:`.reconciler` applies plans (with :mod:`.replicas` and :mod:`.layout`), remembering in
  :mod:`.state` (SQLite); :mod:`.urls` presigns downloads (:mod:`.sigv4`, :mod:`.sas`).

Importing this package loads nothing heavy; libcloud loads with the store modules.
"""
