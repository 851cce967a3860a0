"""publisher: committed outbox events from the Cosmos DB change feed to Event Hubs."""
