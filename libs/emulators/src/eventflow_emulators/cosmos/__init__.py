"""A wire-level Cosmos DB emulator: the real `azure-cosmos` SDK talks to it over HTTP.

Start it with `eventflow-cosmos-emulator` (server.py); tests use `testing.cosmos_emulator`.
"""
