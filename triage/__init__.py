"""Shared core of DermaTriage: settings, schema, sessions, image store, catalogue, risk policy."""
