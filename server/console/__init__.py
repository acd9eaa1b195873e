"""``fedge console``: a live operator console in the browser over what fedge already keeps.

Views (runs, holders, placement, fleet) are read from the operator's folder and the fleet's
retained MQTT state (:mod:`~server.console.sources`, :mod:`~server.console.fleet_watch`); the
JSON API and the event stream are in :mod:`~server.console.app`; who may use it, in
:mod:`~server.console.security`; the actions, each audited, in :mod:`~server.console.actions`.
"""
