"""producer-api: the orders REST API with the transactional outbox on Cosmos DB."""
