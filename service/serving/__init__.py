"""What a serving process holds, apart from HTTP: the active ruleset (hot-swapped, and
followed across the workers of one server) and the link to the audit log."""
