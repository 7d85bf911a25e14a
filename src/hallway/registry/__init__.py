"""Contacts that change while the daemon runs: the store's change log (``changes``) and the
venue registry that hands one venue's contacts to its scanners."""
