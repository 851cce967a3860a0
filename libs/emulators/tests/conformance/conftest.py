"""The conformance suite's fixtures (the emulators, Azurite, cosmosdb-server) come from the
`eventflow_emulators` pytest plugin."""
