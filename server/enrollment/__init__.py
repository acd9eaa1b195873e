"""Who may join the federation: the registry of data holders and its audit log, the enrollment
rules, and the HTTPS endpoint that registers keys with the SuperLink.
"""
