"""Event Hubs and Service Bus emulator: AMQP 1.0."""
