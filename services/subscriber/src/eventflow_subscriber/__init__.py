"""subscriber: the consuming side's reader of the publisher's hub, filling its consumer's inbox."""
