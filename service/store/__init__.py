"""Tables, journal appends and event queries. Stores may flush, never commit."""
