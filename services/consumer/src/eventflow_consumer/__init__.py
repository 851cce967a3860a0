"""consumer: session-ordered, exactly-once effects from the Service Bus inbox."""
