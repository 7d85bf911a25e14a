"""Network import: a person's downloaded contacts (LinkedIn, X, vCard, CSV) matched to the
enrolled contacts, in memory. Pure: bytes in, matches out; nothing here stores or logs."""
