"""The wire: Cosmos DB's REST protocol over HTTP, mapped onto the model."""
