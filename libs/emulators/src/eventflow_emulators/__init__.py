"""Wire-level local emulators of Azure Cosmos DB, Event Hubs and Service Bus."""
